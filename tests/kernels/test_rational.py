"""zoo::group_rational: the Triton kernels (interpreter on CPU, compiled on GPU) against the PyTorch reference."""

from __future__ import annotations

import pytest
import torch

import zoo.kernels._backend as backend_module
from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels._backend import ticket_counters
from zoo.kernels.rational import group_rational, group_rational_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["torch", "triton"]
# (shape of x, groups): KAT's 3 x 7 x 40 with 8 groups of 5 (masked backward lanes); a single row; a 1-D input;
# groups of 96 (kat_b's width 768 in 8 groups: forward tiles spanning groups, three backward column blocks of 32);
# groups of 48 in backward column blocks of 16 over two row programs; a group of 136 (three backward column blocks
# of 64, the last one masked); 4-D input; rows spread over several backward programs, each looping over several
# tiles.
CASES = [
    ((3, 7, 40), 8),
    ((1, 40), 8),
    ((40,), 8),
    ((2, 768), 8),
    ((4, 9, 96), 2),
    ((3, 272), 2),
    ((2, 3, 5, 12), 4),
    ((5, 13, 16), 2),
]


def _coefficients(groups: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = (0.5 * torch.randn(1, 6, generator=gen)).to(DEVICE)
    b = (0.5 * torch.randn(groups, 4, generator=gen)).to(DEVICE)
    return a, b


def _run(x, a, b, dy, backend):
    """Forward and the three gradients of ``group_rational`` on fresh leaves."""
    x, a, b = (t.detach().clone().requires_grad_(True) for t in (x, a, b))
    y = group_rational(x, a, b, backend=backend)
    y.backward(dy)
    return y.detach(), x.grad, a.grad, b.grad


def _reference64(x, a, b, dy):
    """Forward and gradients of the reference in float64: the ground truth for every comparison."""
    return _run(x.double(), a.double(), b.double(), dy.double(), backend="torch")


def _check_against_reference64(x, a, b, dy, backend, dtype):
    y, dx, da, db = _run(x, a, b, dy, backend)
    y64, dx64, da64, db64 = _reference64(x, a, b, dy)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape
    assert da.dtype == a.dtype and db.dtype == b.dtype
    scale = float(y64.detach().abs().max().clamp_min(1.0))
    assert_close(y, y64, dtype, scale=scale)
    assert_close(dx, dx64, dtype, scale=float(dx64.abs().max().clamp_min(1.0)))
    assert_relative_error(da, da64, 1e-4)
    assert_relative_error(db, db64, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,groups", CASES, ids=str)
def test_forward_and_gradients_match_float64_reference(shape, groups, dtype, backend):
    torch.manual_seed(0)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    dy = torch.randn(shape, device=DEVICE).to(dtype)
    a, b = _coefficients(groups)
    _check_against_reference64(x, a, b, dy, backend, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_matches_reference_in_same_dtype(dtype):
    torch.manual_seed(1)
    x = torch.randn(3, 7, 40, device=DEVICE).to(dtype)
    dy = torch.randn(3, 7, 40, device=DEVICE).to(dtype)
    a, b = _coefficients(8, seed=1)
    y_t, dx_t, da_t, db_t = _run(x, a, b, dy, "triton")
    y_r, dx_r, da_r, db_r = _run(x, a, b, dy, "torch")
    assert_close(y_t, y_r, dtype, scale=float(y_r.abs().max()))
    assert_close(dx_t, dx_r, dtype, scale=float(dx_r.abs().max()))
    assert_relative_error(da_t, da_r, 1e-4)
    assert_relative_error(db_t, db_r, 1e-4)


def test_backward_is_deterministic_and_leaves_the_tickets_at_zero():
    """The last program adds the partial sums in a fixed order: two calls give the same bits; it resets the ticket
    counter, or the next call's programs would never see the last ticket (the coefficient gradients would be left
    unwritten)."""
    torch.manual_seed(9)
    x = torch.randn(40, 96, device=DEVICE)
    dy = torch.randn_like(x)
    a, b = _coefficients(2, seed=9)
    first = _run(x, a, b, dy, "triton")
    assert torch.count_nonzero(ticket_counters(x.device, 1)) == 0
    second = _run(x, a, b, dy, "triton")
    for u, v in zip(first, second, strict=True):
        assert torch.equal(u, v)
    _check_against_reference64(x, a, b, dy, "triton", torch.float32)


@pytest.mark.parametrize("layout", ["permuted", "strided-rows", "strided-columns", "expanded-grad"])
def test_non_contiguous_inputs(layout):
    torch.manual_seed(2)
    a, b = _coefficients(4, seed=2)
    dy = torch.randn(3, 5, 16, device=DEVICE)
    if layout == "permuted":  # channels not innermost in memory: column stride != 1
        x = torch.randn(16, 3, 5, device=DEVICE).permute(1, 2, 0)
    elif layout == "strided-rows":  # every other row
        x = torch.randn(3, 10, 16, device=DEVICE)[:, ::2]
    elif layout == "strided-columns":  # every other channel
        x = torch.randn(3, 5, 32, device=DEVICE)[..., ::2]
    else:  # gradient broadcast from a scalar: all strides 0
        x = torch.randn(3, 5, 16, device=DEVICE)
        dy = torch.ones((), device=DEVICE).expand(3, 5, 16)
    assert not x.is_contiguous() or not dy.is_contiguous()
    _check_against_reference64(x, a, b, dy, "triton", torch.float32)


@pytest.mark.parametrize("init", ["identity", "swish"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_inputs_stay_finite(init, dtype):
    from zoo.layers.rational import RATIONAL_INITS

    coefficients = RATIONAL_INITS[init]
    a = torch.tensor([coefficients.numerator], device=DEVICE)
    b = torch.tensor([coefficients.denominator] * 2, device=DEVICE)
    x = torch.linspace(-1e4, 1e4, 64, device=DEVICE).to(dtype).view(2, 32)
    dy = torch.ones_like(x)
    for backend in BACKENDS:
        outputs = _run(x, a, b, dy, backend)
        for name, t in zip(("y", "dx", "d_numerator", "d_denominator"), outputs, strict=True):
            assert torch.isfinite(t).all(), f"{backend}: non-finite {name} for |x| up to 1e4"
    _check_against_reference64(x, a, b, dy, "triton", dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_init_learns_its_denominator(backend):
    """b = 0 exactly: d|b|/db = +1 at 0 gives dL/db_j = -sum dy * F/Q * |x|^(j+1) = -sum dy * x |x|^(j+1)."""
    torch.manual_seed(3)
    x = torch.randn(4, 16, device=DEVICE)
    dy = torch.randn(4, 16, device=DEVICE)
    a = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], device=DEVICE)
    b = torch.zeros(2, 4, device=DEVICE)
    y, _dx, _da, db = _run(x, a, b, dy, backend)
    assert_close(y, x, torch.float32)
    x64, dy64 = x.double().view(4, 2, 8), dy.double().view(4, 2, 8)
    expected = torch.stack([-(dy64 * x64 * x64.abs() ** (j + 1)).sum((0, 2)) for j in range(4)], dim=1)
    assert (db.abs() > 0).all()
    assert_relative_error(db, expected, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_subgradient_at_exact_zero(backend):
    """At x = 0: F = a0, Q'(0) = +|b0| (d|x|/dx = +1 at 0, also for -0.0), so dF/dx = a1 - a0 |b0|."""
    a = torch.tensor([[0.3, 0.7, 0.1, 0.2, -0.1, 0.05]], device=DEVICE)
    b = torch.tensor([[0.5, -0.25, 0.0, -0.0]], device=DEVICE)
    x = torch.tensor([[0.0, -0.0, 0.0, 0.0]], device=DEVICE)
    dy = torch.ones_like(x)
    y, dx, _da, db = _run(x, a, b, dy, backend)
    assert_close(y, torch.full_like(x, 0.3), torch.float32)
    assert_close(dx, torch.full_like(x, 0.7 - 0.3 * 0.5), torch.float32)
    # Every |x|^(j+1) is 0 at x = 0, so the denominator gradient is exactly zero there.
    assert (db == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    a, b = _coefficients(4)
    x = torch.empty(0, 8, device=DEVICE, requires_grad=True)
    y = group_rational(x, a.requires_grad_(), b.requires_grad_(), backend=backend)
    y.sum().backward()
    assert y.shape == (0, 8)
    assert (a.grad == 0).all() and (b.grad == 0).all()


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_clear_errors(backend):
    a, b = _coefficients(8)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        group_rational(torch.randn(2, 12, device=DEVICE), a, b, backend=backend)
    with pytest.raises(TypeError, match="floating-point"):
        group_rational(torch.ones(2, 16, dtype=torch.int32, device=DEVICE), a, b, backend=backend)
    with pytest.raises(ValueError, match=r"weight_numerator must have shape \[1, 6\]"):
        group_rational(torch.randn(2, 16, device=DEVICE), torch.randn(8, 6, device=DEVICE), b, backend=backend)
    with pytest.raises(ValueError, match=r"weight_denominator must have shape \[num_groups, 4\]"):
        group_rational(torch.randn(2, 16, device=DEVICE), a, torch.randn(8, 5, device=DEVICE), backend=backend)
    with pytest.raises(ValueError, match="at least one dimension"):
        group_rational(torch.tensor(1.0, device=DEVICE), a, b, backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        group_rational(torch.randn(2, 16, device=DEVICE), a, b, backend="cuda")


def test_device_mismatch_and_bad_gradients_raise_clear_errors():
    from zoo.kernels.rational import group_rational_backward

    a, b = _coefficients(8)
    with pytest.raises(ValueError, match="must be on one device"):
        group_rational(torch.randn(2, 16, device="meta"), a, b, backend="torch")
    x = torch.randn(2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"grad_output must have the shape of x \[2, 16\]"):
        group_rational_backward(torch.randn(2, 8, device=DEVICE), x, a, b)
    with pytest.raises(TypeError, match="grad_output must have a floating-point dtype"):
        group_rational_backward(torch.ones(2, 16, dtype=torch.int64, device=DEVICE), x, a, b)
    with pytest.raises(ValueError, match="grad_output must be on the device of x"):
        group_rational_backward(torch.randn(2, 16, device="meta"), x, a, b)


@pytest.mark.parametrize("block_d", [0, 3, 1 << 16, 2.0])
def test_block_d_override_is_validated(block_d):
    from zoo.kernels.rational import group_rational_backward, group_rational_forward

    a, b = _coefficients(8)
    x = torch.randn(2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="block_d must be a power of two"):
        group_rational_forward(x, a, b, block_d=block_d)
    with pytest.raises(ValueError, match="block_d must be a power of two"):
        group_rational_backward(x, x, a, b, block_d=block_d)


def test_triton_rejects_float64():
    a, b = _coefficients(8)
    with pytest.raises(TypeError, match="use backend='torch'"):
        group_rational(torch.randn(2, 16, dtype=torch.float64, device=DEVICE), a, b, backend="triton")


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER", False)
    a, b = _coefficients(8)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        group_rational(torch.randn(2, 16), a.cpu(), b.cpu(), backend="triton")
    # The launcher itself refuses too (no crash inside Triton).
    from zoo.kernels.rational import group_rational_forward

    with pytest.raises(ValueError, match="CUDA"):
        group_rational_forward(torch.randn(2, 16), a.cpu(), b.cpu())


def test_triton_on_meta_device_is_an_error():
    with pytest.raises(ValueError, match="device 'meta'"):
        group_rational(
            torch.empty(2, 16, device="meta"),
            torch.empty(1, 6, device="meta"),
            torch.empty(8, 4, device="meta"),
            backend="triton",
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_out_dtype_rounds_the_float32_result_once(out_dtype, backend):
    """out_dtype gives F(x) rounded once from float32 (what a cast of the float32 result gives), and x's gradient
    in x's dtype from a gradient in out_dtype; the coefficient gradients match the float64 reference."""
    torch.manual_seed(10)
    x = torch.randn(4, 9, 96, device=DEVICE)
    dy = torch.randn(4, 9, 96, device=DEVICE).to(out_dtype)
    a, b = _coefficients(2, seed=10)
    leaves = [t.clone().requires_grad_(True) for t in (x, a, b)]
    y = group_rational(*leaves, backend=backend, out_dtype=out_dtype)
    assert y.dtype == out_dtype
    y.backward(dy)
    assert leaves[0].grad.dtype == torch.float32
    y64, dx64, da64, db64 = _reference64(x, a, b, dy.float())
    assert_close(y, y64, out_dtype, scale=float(y64.abs().max()))
    assert_close(leaves[0].grad, dx64, torch.float32, scale=float(dx64.abs().max()))
    assert_relative_error(leaves[1].grad, da64, 1e-4)
    assert_relative_error(leaves[2].grad, db64, 1e-4)
    if backend == "torch" or DEVICE.type == "cuda":  # the interpreter rounds to bf16 by truncation, a GPU to nearest
        assert torch.equal(y, group_rational(x, a, b, backend=backend).to(out_dtype))


@pytest.mark.parametrize("out_dtype", [torch.int32, "bfloat16"], ids=str)
def test_bad_out_dtype_is_a_type_error(out_dtype):
    a, b = _coefficients(2)
    x = torch.randn(3, 8, device=DEVICE)
    for backend in BACKENDS:
        with pytest.raises(TypeError, match="out_dtype must be None or a floating-point torch.dtype"):
            group_rational(x, a, b, backend=backend, out_dtype=out_dtype)


def test_triton_rejects_float64_out_dtype():
    a, b = _coefficients(2)
    with pytest.raises(TypeError, match="writes out_dtype in"):
        group_rational(torch.randn(3, 8, device=DEVICE), a, b, backend="triton", out_dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ registration


@pytest.mark.parametrize("layout", ["contiguous-fp32", "permuted-bf16"])
def test_opcheck_forward_and_backward(layout):
    torch.manual_seed(4)
    if layout == "contiguous-fp32":
        x = torch.randn(3, 7, 40, device=DEVICE)
    else:
        x = torch.randn(40, 3, 7, device=DEVICE).to(torch.bfloat16).permute(1, 2, 0)
    dy = torch.randn(3, 7, 40, device=DEVICE).to(x.dtype)
    a, b = _coefficients(8)
    torch.library.opcheck(
        torch.ops.zoo.group_rational.default, (x.requires_grad_(), a.requires_grad_(), b.requires_grad_())
    )
    torch.library.opcheck(torch.ops.zoo.group_rational_backward.default, (dy, x.detach(), a.detach(), b.detach()))


def test_opcheck_with_out_dtype():
    torch.manual_seed(4)
    x = torch.randn(3, 7, 40, device=DEVICE, requires_grad=True)
    a, b = (t.requires_grad_() for t in _coefficients(8))
    torch.library.opcheck(torch.ops.zoo.group_rational.default, (x, a, b, torch.bfloat16))
    dy = torch.randn(3, 7, 40, device=DEVICE).to(torch.bfloat16)
    torch.library.opcheck(torch.ops.zoo.group_rational_backward.default, (dy, x.detach(), a.detach(), b.detach()))


def test_registered_op_autograd_matches_reference():
    """The op's own autograd registration (used under torch.compile) gives the reference gradients; eager calls
    of group_rational go through an autograd.Function over the same launchers."""
    torch.manual_seed(9)
    x = torch.randn(3, 7, 40, device=DEVICE)
    dy = torch.randn(3, 7, 40, device=DEVICE)
    a, b = _coefficients(8, seed=9)
    leaves = [t.clone().requires_grad_(True) for t in (x, a, b)]
    torch.ops.zoo.group_rational(*leaves).backward(dy)
    _y64, dx64, da64, db64 = _reference64(x, a, b, dy)
    assert_close(leaves[0].grad, dx64, torch.float32, scale=float(dx64.abs().max()))
    assert_relative_error(leaves[1].grad, da64, 1e-4)
    assert_relative_error(leaves[2].grad, db64, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch.manual_seed(5)
    a, b = _coefficients(8)
    x = torch.randn(3, 7, 40, device=DEVICE)
    dy = torch.randn(3, 7, 40, device=DEVICE)

    def fn(x, a, b):
        y = group_rational(x * 2.0, a, b, backend=backend) + 1.0
        return y, group_rational(x, a, b, backend=backend, out_dtype=torch.bfloat16)

    def loss(y, y16):
        return (y * dy).sum() + (y16.float() * dy).sum()

    compiled = torch.compile(fn, fullgraph=True)
    eager_out = [t.detach().clone().requires_grad_(True) for t in (x, a, b)]
    comp_out = [t.detach().clone().requires_grad_(True) for t in (x, a, b)]
    loss(*fn(*eager_out)).backward()
    y, y16 = compiled(*comp_out)
    loss(y, y16).backward()
    expected, expected16 = fn(x, a, b)
    assert_close(y, expected, torch.float32)
    assert y16.dtype == torch.bfloat16
    assert_close(y16, expected16, torch.bfloat16, scale=float(expected16.abs().max()))
    for eager, comp in zip(eager_out, comp_out, strict=True):
        assert_relative_error(comp.grad, eager.grad, 1e-5)


def test_autocast_keeps_activation_dtype_and_fp32_coefficients():
    """Under autocast the activation arrives in bf16 (from a Linear) and stays bf16; the coefficients stay fp32
    and both backends agree on the output and on every gradient."""
    torch.manual_seed(6)
    linear = torch.nn.Linear(16, 16).to(DEVICE)
    inputs = torch.randn(5, 16, device=DEVICE)
    a, b = _coefficients(4)
    results = {}
    for backend in BACKENDS:
        linear.zero_grad()
        a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            h = linear(inputs)
            y = group_rational(h, a_, b_, backend=backend)
        assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
        assert a_.dtype == torch.float32 and b_.dtype == torch.float32
        y.float().sum().backward()  # dy = 1 exactly, so both backends get the same gradient in
        results[backend] = (h.detach(), y.detach(), a_.grad, b_.grad, linear.weight.grad.clone())
    h_t, y_t, da_t, db_t, dw_t = results["triton"]
    h_r, y_r, da_r, db_r, dw_r = results["torch"]
    assert torch.equal(h_t, h_r)
    assert_close(y_t, y_r, torch.bfloat16, scale=float(y_r.abs().max()))
    # the bf16 output is F computed with the fp32 coefficients, rounded once
    assert_close(
        y_t,
        group_rational_reference(h_t.double(), a.double(), b.double()),
        torch.bfloat16,
        scale=float(y_r.abs().max()),
    )
    assert_relative_error(da_t, da_r, 1e-4)
    assert_relative_error(db_t, db_r, 1e-4)
    assert_relative_error(dw_t, dw_r, 2e-2)  # through dx rounded to bf16


def test_reference_is_plain_pytorch_on_any_dtype():
    """The reference also runs float64 (the oracle above) and keeps the input dtype."""
    a, b = _coefficients(2)
    x = torch.randn(3, 4, dtype=torch.float64, device=DEVICE)
    y = group_rational_reference(x, a, b)
    assert y.dtype == torch.float64


# ------------------------------------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [768, 3072])
def test_gpu_full_size_matches_reference(width, dtype):
    torch.manual_seed(7)
    x = torch.randn(8, 197, width, device="cuda").to(dtype)
    dy = torch.randn(8, 197, width, device="cuda").to(dtype)
    a, b = _coefficients(8)
    _check_against_reference64(x, a, b, dy, "triton", dtype)


@pytest.mark.gpu
def test_gpu_auto_backend_runs_float64_on_the_reference():
    a, b = _coefficients(8)
    x = torch.randn(4, 16, dtype=torch.float64, device="cuda", requires_grad=True)
    y = group_rational(x, a.double(), b.double())  # auto: Triton takes fp16/bf16/fp32 only
    assert y.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: group_rational(t, a.double(), b.double()), (x,))


@pytest.mark.gpu
def test_gpu_autotuned_backward_is_deterministic():
    torch.manual_seed(8)
    x = torch.randn(64, 197, 768, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    a, b = _coefficients(8)
    first = _run(x, a, b, dy, "triton")
    second = _run(x, a, b, dy, "triton")
    for u, v in zip(first, second, strict=True):
        assert torch.equal(u, v)
