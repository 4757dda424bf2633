"""The tensor-core implicit-GEMM depthwise convolution for large kernels (zoo/kernels/dwconv/_igemm.py): forward,
input gradient and weight / bias gradient against the float64 reference (interpreter on CPU, compiled on GPU).

Tolerances follow from the precision: the kernels take the inputs as given (the test rounds them to the dtype
first, so the float64 reference sees the same values), multiply bf16 / fp16 exactly into fp32 and fp32 on 3xTF32
(about 2^-21 per product), accumulate in fp32 and round the result once to the output dtype. So every element
satisfies |actual - exact| <= u |exact| + 1e-5 S, with u the rounding error of the output dtype (0 for fp32) and S
the same sum over absolute values (|x| * |w| + |b| for the forward): the accumulation's error is relative to the
magnitudes summed, not to the (possibly cancelling) result."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DEVICE, in_layout
from zoo.kernels._backend import ticket_counters
from zoo.kernels.dwconv import _igemm
from zoo.kernels.dwconv.reference import dwconv2d_reference

# the relative rounding error of one conversion from fp32: half an ulp (round to nearest), but a whole one for bf16,
# which the interpreter converts by truncation
UNIT_ROUNDOFF = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-11}
ACCUMULATION = 1e-5  # fp32 sums of up to 961 taps x the positions, 3xTF32 products: relative to the magnitudes


def _exact(x, weight, bias, dy):
    """float64 (y, dx, dw, db) of the reference at these values, and the same with absolute values (the bounds'
    magnitudes S)."""

    def run(x, weight, bias, dy):
        leaves = [t.detach().double().requires_grad_(True) for t in (x, weight, bias)]
        y = dwconv2d_reference(*leaves)
        y.backward(dy.double())
        return y.detach(), *(t.grad for t in leaves)

    return run(x, weight, bias, dy), run(x.abs(), weight.abs(), bias.abs(), dy.abs())


def _assert_within(name, actual, exact, magnitude, dtype, operand_rounding=0.0):
    """|actual - exact| <= u |exact| + (1e-5 + operand_rounding) S elementwise (operand_rounding: the relative error
    of an operand the kernel rounds, which the magnitudes S bound)."""
    bound = UNIT_ROUNDOFF[dtype] * exact.abs() + (ACCUMULATION + operand_rounding) * magnitude
    error = (actual.double() - exact).abs()
    worst = int((error - bound).flatten().argmax())
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    assert (error <= bound).all(), (
        f"{name}: error {error.flatten()[worst]:.3e} > bound {bound.flatten()[worst]:.3e} at flat index {worst} "
        f"(actual {actual.double().flatten()[worst]:.6e}, exact {exact.flatten()[worst]:.6e})"
    )


def _run_igemm(x, weight, bias, dy):
    y = torch.empty_like(x, memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
    _igemm.forward(x, weight, bias, y, (1, 1), (1, 1))
    dx = torch.empty_like(y)
    _igemm.input_grad(dy, weight, dx, (1, 1), (1, 1))
    dw, db = _igemm.weight_grad(x, dy, weight, (1, 1), (1, 1))
    return y, dx, dw, db


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _inputs(shape, kernel, dtype, layout, weight_dtype=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen).to(dtype)
    weight = (torch.randn(c, 1, *kernel, generator=gen) / kernel[0]).to(weight_dtype or dtype)
    bias = torch.randn(c, generator=gen).to(weight_dtype or dtype)
    dy = torch.randn(shape, generator=gen).to(dtype)
    x, dy = (in_layout(t.to(DEVICE), layout) for t in (x, dy))
    return x, weight.to(DEVICE), bias.to(DEVICE), dy


# (x shape, kernel, dtype, layout): K = 13, 15, 17, 31 and a rectangular kernel; odd maps, maps smaller than the
# kernel (K = 31 on 9 x 20, 13 on 7 x 9, 15 on 5 x 4), maps larger than the interpreter's tile (2 images x 8 rows x
# 16 columns x 2 channels); channel counts that are not multiples of the tile; every dtype in every layout.
CASES = [
    ((1, 3, 7, 9), (13, 13), torch.float32, "nchw"),
    ((2, 3, 17, 18), (13, 13), torch.bfloat16, "channels_last"),
    ((1, 3, 9, 20), (31, 31), torch.float16, "strided"),
    ((3, 5, 5, 4), (15, 15), torch.float32, "channels_last"),
    ((1, 3, 21, 19), (17, 17), torch.bfloat16, "nchw"),
    ((1, 2, 6, 33), (31, 31), torch.float32, "strided"),
    ((2, 1, 9, 14), (13, 15), torch.float16, "channels_last"),
    ((1, 2, 12, 9), (17, 13), torch.float16, "nchw"),
    ((2, 3, 6, 7), (15, 15), torch.bfloat16, "strided"),
]


@pytest.mark.parametrize("shape,kernel,dtype,layout", CASES, ids=str)
def test_igemm_matches_float64_reference(shape, kernel, dtype, layout):
    x, weight, bias, dy = _inputs(shape, kernel, dtype, layout)
    y, dx, dw, db = _run_igemm(x, weight, bias, dy)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == dtype
    assert dw.shape == weight.shape and db.shape == bias.shape
    assert _is_channels_last(y) == _is_channels_last(x)
    exact, magnitude = _exact(x, weight, bias, dy)
    for name, actual, e, m in zip(("y", "dx", "dw", "db"), (y, dx, dw, db), exact, magnitude, strict=True):
        _assert_within(name, actual, e, m, dtype)


def test_fp32_weight_with_bf16_activations():
    """Autocast's case: bf16 activations, the module's fp32 weight (rounded to bf16 for the products, as autocast
    does: a relative error of at most 2^-7 per weight, truncation included); the weight and bias gradients come
    back in fp32."""
    x, weight, bias, dy = _inputs((2, 3, 10, 11), (13, 13), torch.bfloat16, "channels_last", torch.float32)
    y, dx, dw, db = _run_igemm(x, weight, bias, dy)
    assert (y.dtype, dx.dtype, dw.dtype, db.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32, torch.float32)
    exact, magnitude = _exact(x, weight, bias, dy)
    _assert_within("y", y, exact[0], magnitude[0], torch.bfloat16, operand_rounding=2.0**-7)
    _assert_within("dx", dx, exact[1], magnitude[1], torch.bfloat16, operand_rounding=2.0**-7)
    _assert_within("dw", dw, exact[2], magnitude[2], torch.float32)
    _assert_within("db", db, exact[3], magnitude[3], torch.float32)


def test_weight_grad_is_deterministic_and_leaves_its_tickets_at_zero():
    """Many chunks per channel block (the interpreter reduces 16 positions per program): two calls agree bit for
    bit, and the per-device tickets are back at zero after each call."""
    x, weight, _, dy = _inputs((2, 5, 8, 9), (13, 13), torch.float32, "channels_last")
    first = _igemm.weight_grad(x, dy, weight, (1, 1), (1, 1))
    assert torch.count_nonzero(ticket_counters(x.device, 1)) == 0
    second = _igemm.weight_grad(x, dy, weight, (1, 1), (1, 1))
    assert torch.count_nonzero(ticket_counters(x.device, 1)) == 0
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_empty_batch():
    x = torch.zeros(0, 3, 5, 5, device=DEVICE)
    weight = torch.randn(3, 1, 13, 13, device=DEVICE)
    y = torch.empty_like(x)
    _igemm.forward(x, weight, None, y, (1, 1), (1, 1))
    dw, db = _igemm.weight_grad(x, x, weight, (1, 1), (1, 1))
    assert torch.equal(dw, torch.zeros_like(weight)) and torch.equal(db, torch.zeros(3, device=DEVICE))


def test_supports_large_kernels_at_stride_one_only():
    assert _igemm.supports((13, 13), (1, 1), (1, 1), "channels_last", torch.bfloat16)
    assert _igemm.supports((31, 31), (1, 1), (1, 1), "nchw", torch.float32)
    assert _igemm.supports((13, 17), (1, 1), (1, 1), "nchw", torch.float16)
    assert not _igemm.supports((11, 11), (1, 1), (1, 1), "channels_last", torch.bfloat16)
    assert not _igemm.supports((13, 1), (1, 1), (1, 1), "channels_last", torch.bfloat16)
    assert not _igemm.supports((13, 13), (2, 2), (1, 1), "channels_last", torch.bfloat16)
    assert not _igemm.supports((13, 13), (1, 1), (1, 2), "channels_last", torch.bfloat16)
    assert not _igemm.supports((13, 13), (1, 1), (1, 1), "channels_last", torch.float64)


def test_fp32_strided_and_64_bit_launches_keep_to_the_small_configuration():
    """The autotuner's candidates (``_prune_conv_configs``): every configuration for bf16 / fp16 maps with a unit
    stride and 32-bit offsets; only the last, small one (no spills there) for fp32, strided maps or 64-bit
    offsets."""
    configs = ["large", "wide", "small"]
    unit = dict(s_c=1, s_w=7, d_c=1, d_w=7)

    def candidates(dtype, int64=False, **strides):
        named = {"src_ptr": torch.empty(0, dtype=dtype), **{**unit, **strides}}
        return _igemm._prune_conv_configs(configs, named, INT64=int64, FLIP=False)

    assert candidates(torch.bfloat16) == configs
    assert candidates(torch.float16, s_c=9, s_w=1, d_c=9, d_w=1) == configs  # NCHW
    assert candidates(torch.float32) == ["small"]
    assert candidates(torch.bfloat16, int64=True) == ["small"]
    assert candidates(torch.bfloat16, s_c=3, s_w=5) == ["small"]  # no unit stride in the source
    assert candidates(torch.bfloat16, d_c=3, d_w=5) == ["small"]  # nor in the destination


def test_weight_gradient_with_64_bit_offsets_keeps_the_small_tiles():
    """With 64-bit offsets the weight gradient's autotuner sees only tiles of at most 32 elements per warp (the
    8 x 32 tile spilled under Triton 3.6); otherwise every configuration."""
    from zoo.kernels.dwconv._common import make_configs

    configs = make_configs(((8, 16, 4), (8, 32, 4), (16, 16, 8)), ("BLOCK_C", "BLOCK_W"))
    assert _igemm._wgrad_candidates(configs, False) == configs
    kept = _igemm._prune_wgrad_configs(configs, {"INT64": True})
    assert [(c.kwargs["BLOCK_C"], c.kwargs["BLOCK_W"], c.num_warps) for c in kept] == [(8, 16, 4), (16, 16, 8)]
