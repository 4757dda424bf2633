"""zoo::layer_norm_group_rational: the fused Triton kernels (interpreter on CPU) against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels._backend import ticket_counters
from zoo.kernels.norm_rational import (
    NORM_WIDTHS,
    _tiles,
    layer_norm_group_rational,
    layer_norm_group_rational_backward,
    layer_norm_group_rational_forward,
)
from zoo.kernels.rational import group_rational

BACKENDS = ["torch", "triton"]
# (shape of x, groups): KAT-like 3 x 7 x 40 in 8 groups of 5 (a row in parts of 32 + 8 columns); groups of 24
# (kat_t's 192 in 8 groups, scaled down: 16 + 8); a single row; 37 rows over several backward programs, several row
# tiles each; 4-D input; 44 columns (32 + 16, 4 of them masked) and 3 (2 + 1, none masked).
CASES = [
    ((3, 7, 40), 8),
    ((2, 9, 24), 8),
    ((1, 48), 4),
    ((37, 48), 4),
    ((2, 3, 5, 16), 2),
    ((3, 5, 44), 4),
    ((4, 3), 1),
]


def _parameters(channels: int, groups: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = 1.0 + 0.3 * torch.randn(channels, generator=gen)
    bias = 0.2 * torch.randn(channels, generator=gen)
    a = 0.5 * torch.randn(1, 6, generator=gen)
    b = 0.5 * torch.randn(groups, 4, generator=gen)
    return [t.to(DEVICE) for t in (weight, bias, a, b)]


def _run(x, params, dy, backend, out_dtype=None, eps=1e-6):
    """Output and the five gradients on fresh leaves."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *params)]
    y = layer_norm_group_rational(*leaves, eps, out_dtype, backend=backend)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves]


def _check(x, params, dy, backend, out_dtype=None):
    results = _run(x, params, dy, backend, out_dtype)
    expected = _run(x.double(), [p.double() for p in params], dy.double(), "torch", torch.float64)
    y, dx, *grads = results
    assert y.dtype == (out_dtype or x.dtype) and dx.dtype == x.dtype and y.shape == x.shape
    assert_close(y, expected[0], y.dtype, scale=float(expected[0].abs().max().clamp_min(1.0)))
    assert_close(dx, expected[1], x.dtype, scale=float(expected[1].abs().max().clamp_min(1.0)))
    for grad, reference, param in zip(grads, expected[2:], params, strict=True):
        assert grad.dtype == param.dtype
        # float32 sums over the rows (the inputs are the same values in both): relative to the largest
        assert_relative_error(grad, reference, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,groups", CASES, ids=str)
def test_forward_and_gradients_match_float64_reference(shape, groups, dtype, backend):
    torch.manual_seed(0)
    x = (3.0 * torch.randn(shape, device=DEVICE) + 1.0).to(dtype)  # an offset and a scale the norm removes
    dy = torch.randn(shape, device=DEVICE).to(dtype)
    _check(x, _parameters(shape[-1], groups), dy, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_in_bfloat16_out_as_under_autocast(backend):
    """KAT's block under bf16 autocast: the float32 residual stream in, bf16 out and a bf16 gradient back; the
    output equals casting the float32 result (rounded once), dx stays float32."""
    torch.manual_seed(1)
    x = torch.randn(4, 9, 48, device=DEVICE)
    params = _parameters(48, 8, seed=1)
    dy = torch.randn(4, 9, 48, device=DEVICE).to(torch.bfloat16)
    _check(x, params, dy, backend, out_dtype=torch.bfloat16)
    if backend == "torch" or DEVICE.type == "cuda":  # the interpreter rounds to bf16 by truncation
        y32 = layer_norm_group_rational(x, *params, backend=backend)
        torch.testing.assert_close(
            layer_norm_group_rational(x, *params, out_dtype=torch.bfloat16, backend=backend),
            y32.to(torch.bfloat16),
            rtol=0,
            atol=0,
        )


def test_reference_is_layer_norm_then_group_rational():
    torch.manual_seed(2)
    x = torch.randn(5, 24, dtype=torch.float64)
    weight, bias, a, b = (p.double() for p in _parameters(24, 4, seed=2))
    expected = group_rational(torch.nn.functional.layer_norm(x, (24,), weight, bias, 1e-5), a, b, backend="torch")
    torch.testing.assert_close(layer_norm_group_rational(x, weight, bias, a, b, 1e-5, backend="torch"), expected)


@pytest.mark.parametrize("layout", ["permuted", "strided-rows", "expanded-grad"])
def test_non_contiguous_inputs(layout):
    torch.manual_seed(3)
    params = _parameters(16, 4, seed=3)
    dy = torch.randn(3, 5, 16, device=DEVICE)
    if layout == "permuted":  # channels not innermost in memory
        x = torch.randn(16, 3, 5, device=DEVICE).permute(1, 2, 0)
    elif layout == "strided-rows":
        x = torch.randn(3, 10, 16, device=DEVICE)[:, ::2]
    else:
        x = torch.randn(3, 5, 16, device=DEVICE)
        dy = torch.ones((), device=DEVICE).expand(3, 5, 16)
    _check(x, params, dy, "triton")


@pytest.mark.parametrize("per_thread", [6, 12])
def test_a_row_is_two_power_of_two_parts_covering_it(per_thread):
    """KAT's widths (3 x 2^k) split into two full parts (no idle column); any width into parts that cover it with
    less padding than one power-of-two tile; 4 warps, more only for rows wider than their tile."""
    for channels in NORM_WIDTHS:
        block_m, hi, lo, warps = _tiles(channels, per_thread)
        assert (hi, lo, warps) == (2 * channels // 3, channels // 3, 4)
        assert block_m * channels <= 4 * 32 * per_thread < 2 * block_m * channels
    for channels in (3, 16, 44, 100, 1000, 8192):
        block_m, hi, lo, warps = _tiles(channels, per_thread)
        assert all(n & (n - 1) == 0 for n in (block_m, hi, lo, warps))
        assert lo <= hi < channels <= hi + lo <= 2 ** (channels - 1).bit_length()
        assert 4 <= warps <= 16 and block_m >= 1
    assert _tiles(1, per_thread)[1:3] == (1, 1)  # one column and a masked one


def test_backward_is_deterministic_and_leaves_the_tickets_at_zero():
    torch.manual_seed(4)
    x = torch.randn(37, 48, device=DEVICE)
    params = _parameters(48, 4, seed=4)
    dy = torch.randn_like(x)
    first = _run(x, params, dy, "triton")
    assert torch.count_nonzero(ticket_counters(x.device, 1)) == 0
    second = _run(x, params, dy, "triton")
    for u, v in zip(first, second, strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    params = [p.requires_grad_() for p in _parameters(16, 2)]
    x = torch.zeros(0, 16, device=DEVICE, requires_grad=True)
    y = layer_norm_group_rational(x, *params, backend=backend)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert x.grad.shape == (0, 16) and all(p.grad is not None and not p.grad.any() for p in params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_clear_errors(backend):
    x = torch.randn(3, 16, device=DEVICE)
    weight, bias, a, b = _parameters(16, 2)
    with pytest.raises(ValueError, match=r"norm_weight must have shape \[16\]"):
        layer_norm_group_rational(x, weight[:8], bias, a, b, backend=backend)
    with pytest.raises(TypeError, match="norm_bias must be a floating-point"):
        layer_norm_group_rational(x, weight, bias.long(), a, b, backend=backend)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        layer_norm_group_rational(x, weight, bias, a, b, 0.0, backend=backend)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        layer_norm_group_rational(x, weight, bias, a, torch.zeros(3, 4, device=DEVICE), backend=backend)
    with pytest.raises(TypeError, match="out_dtype must be None or a floating-point"):
        layer_norm_group_rational(x, weight, bias, a, b, 1e-6, torch.int8, backend=backend)


def test_triton_refuses_rows_wider_than_a_tile():
    x = torch.randn(1, 8200, device=DEVICE)
    weight, bias, a, b = _parameters(8200, 8)
    with pytest.raises(ValueError, match="rows of at most 8192 channels"):
        layer_norm_group_rational(x, weight, bias, a, b, backend="triton")


def test_the_public_backward_checks_its_gradient():
    """layer_norm_group_rational_backward checks grad_output (the autograd path, whose forward checked the rest and
    whose gradient autograd shapes, skips the checks)."""
    x = torch.randn(3, 16, device=DEVICE)
    params = _parameters(16, 2)
    _y, mean, rstd = layer_norm_group_rational_forward(x, *params)
    for dy in (torch.randn(3, 8, device=DEVICE), torch.ones(3, 16, dtype=torch.long, device=DEVICE)):
        with pytest.raises(
            ValueError, match=r"grad_output must be a floating-point tensor of the shape of x \[3, 16\]"
        ):
            layer_norm_group_rational_backward(dy, x, mean, rstd, *params)


def test_opcheck_forward_and_backward():
    torch.manual_seed(5)
    x = torch.randn(3, 7, 40, device=DEVICE, requires_grad=True)
    params = [p.requires_grad_() for p in _parameters(40, 8, seed=5)]
    torch.library.opcheck(torch.ops.zoo.layer_norm_group_rational.default, (x, *params, 1e-6, torch.bfloat16))
    y, mean, rstd = torch.ops.zoo.layer_norm_group_rational(x, *params, 1e-6, None)
    dy = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.zoo.layer_norm_group_rational_backward.default,
        (dy, x.detach(), mean.detach(), rstd.detach(), *(p.detach() for p in params)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch.manual_seed(6)
    x = torch.randn(3, 7, 40, device=DEVICE)
    params = _parameters(40, 8, seed=6)
    dy = torch.randn(3, 7, 40, device=DEVICE)

    def fn(x, *params):
        return layer_norm_group_rational(x * 2.0, *params, backend=backend) + 1.0

    eager = [t.clone().requires_grad_(True) for t in (x, *params)]
    compiled = [t.clone().requires_grad_(True) for t in (x, *params)]
    fn(*eager).backward(dy)
    y = torch.compile(fn, fullgraph=True)(*compiled)
    y.backward(dy)
    assert_close(y, fn(x, *params), torch.float32, scale=float(y.detach().abs().max()))
    for e, c in zip(eager, compiled, strict=True):
        assert_relative_error(c.grad, e.grad, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("channels", [192, 768])
def test_gpu_full_size_matches_reference(channels):
    """KAT's sizes under autocast (float32 in, bf16 out), compiled kernels, several programs of many rows each."""
    torch.manual_seed(7)
    x = torch.randn(64, 197, channels, device="cuda")
    dy = torch.randn(64, 197, channels, device="cuda").to(torch.bfloat16)
    _check(x, _parameters(channels, 8, seed=7), dy, "triton", out_dtype=torch.bfloat16)
