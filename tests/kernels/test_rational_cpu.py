"""The CPU path of the group-rational activation (zoo/kernels/rational_cpu.py; what ``backend="auto"`` runs on CPU
tensors): forward and the three gradients against the reference (``backend="torch"``), compiled (torch.compile's
CPU backend) and eager (the fallback), float32 / float64 / bfloat16, zeros of both signs in x and b (the
+1-at-zero convention), strided inputs; the dispatch, the fallback when a compile fails, autocast and a caller's
torch.compile."""

from __future__ import annotations

import pytest
import torch

import zoo.kernels._cpu_compile as compile_module
import zoo.kernels.rational as rational_module
from tests.helpers import assert_relative_error
from zoo.kernels.rational import group_rational, group_rational_reference
from zoo.kernels.rational_cpu import group_rational_cpu, rational_backward_math, rational_forward_math

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

# (shape of x, groups): KAT-like rows of 8 groups, a 1-D input, one group, 4-D input
CASES = [((3, 7, 40), 8), ((40,), 8), ((5, 12), 1), ((2, 3, 5, 12), 4)]
# forward: elementwise relative tolerance; gradients: ||error|| / ||reference|| (sums in another order)
FORWARD_RTOL = {torch.float32: 1e-5, torch.float64: 1e-13, torch.bfloat16: 1e-2}
GRAD_BOUND = {torch.float32: 1e-5, torch.float64: 1e-13, torch.bfloat16: 1e-2}


@pytest.fixture
def mode(cpu_compile_mode):
    """Run the CPU path compiled (the default) or eagerly (``ZOO_CPU_COMPILE=0``): tests/conftest.py."""
    return cpu_compile_mode


def _inputs(shape, groups, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, 0.0])  # |x| at exactly 0, of either sign: both take the +1 sign
    a = 0.5 * torch.randn(1, 6, generator=gen)
    b = 0.5 * torch.randn(groups, 4, generator=gen)
    b[0, 1], b[-1, 2] = 0.0, -0.0  # |b| at exactly 0: its gradient uses the +1 sign
    dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return x, a, b, dy


def _run(x, a, b, dy, backend):
    x, a, b = (t.detach().clone().requires_grad_(True) for t in (x, a, b))
    y = group_rational(x, a, b, backend=backend)
    y.backward(dy)
    return y.detach(), x.grad, a.grad, b.grad


def _compare(actual, expected, dtype):
    y, *grads = actual
    y_ref, *grads_ref = expected
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=FORWARD_RTOL[dtype], atol=FORWARD_RTOL[dtype])
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert grad.dtype == grad_ref.dtype and grad.shape == grad_ref.shape
        assert_relative_error(grad.float(), grad_ref.float(), GRAD_BOUND[dtype])


@pytest.mark.parametrize("shape, groups", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_and_gradients_match_reference(mode, shape, groups, dtype):
    x, a, b, dy = _inputs(shape, groups, dtype)
    _compare(_run(x, a, b, dy, "auto"), _run(x, a, b, dy, "torch"), dtype)


def test_compiled_mode_compiles_without_falling_back(mode):
    """In the compiled mode the forward and backward run compiled (no failure recorded, an entry for each)."""
    x, a, b, dy = _inputs((4, 3, 16), 8, torch.float32)
    _run(x, a, b, dy, "auto")
    assert compile_module._COMPILE_FAILED == []
    assert compile_module.compile_enabled() == (mode == "compiled")
    if mode == "compiled":
        kinds = {key[0] for key in compile_module._COMPILED if key[-1] == torch.get_num_threads()}
        assert {"rational_forward", "rational_backward"} <= kinds and compile_module._COMPILE_WORKED


def test_bfloat16_input_matches_reference(mode):
    """bf16 activations (as under autocast): float32 arithmetic, bf16 output and input gradient, float32
    coefficient gradients, as the reference."""
    x, a, b, dy = _inputs((6, 32), 8, torch.bfloat16)
    _compare(_run(x, a, b, dy, "auto"), _run(x, a, b, dy, "torch"), torch.bfloat16)


def test_strided_input_and_float64_coefficients(mode):
    """A transposed (non-contiguous) x, coefficients in float64 with float32 x (cast down, as the reference)."""
    x, a, b, dy = _inputs((16, 6), 8, torch.float32)
    x = x.t()  # [6, 16], strided
    actual = _run(x, a.double(), b.double(), dy.t(), "auto")
    expected = _run(x, a.double(), b.double(), dy.t(), "torch")
    assert actual[2].dtype == torch.float64
    _compare(actual, expected, torch.float32)


def test_gradcheck_float64(mode):
    x, a, b, _ = _inputs((3, 8), 2, torch.float64)
    x.view(-1)[:3] = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)  # away from the kink of |x|
    b[0, 1], b[-1, 2] = 0.2, -0.4  # and of |b|
    leaves = [t.detach().double().requires_grad_(True) for t in (x, a, b)]
    assert torch.autograd.gradcheck(lambda *t: group_rational(*t), leaves)


def test_no_grad_forward_matches_reference(mode):
    x, a, b, _ = _inputs((4, 5, 16), 8, torch.float32)
    with torch.no_grad():
        y = group_rational(x, a.requires_grad_(), b)
    assert not y.requires_grad
    torch.testing.assert_close(y, group_rational_reference(x, a, b), rtol=2e-6, atol=2e-6)


def test_math_functions_match_autograd_of_reference():
    """rational_forward_math / rational_backward_math called directly on [M, G, D/G] (the compiled functions'
    bodies)."""
    x, a, b, dy = _inputs((9, 8, 5), 8, torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x.flatten(1), a, b)]
    y = group_rational_reference(*leaves)
    y.backward(dy.flatten(1))
    torch.testing.assert_close(rational_forward_math(x, a, b).flatten(1), y.detach(), rtol=1e-13, atol=1e-13)
    dx, da, db = rational_backward_math(dy, x, a, b)
    for got, want in zip((dx.flatten(1), da, db), (leaf.grad for leaf in leaves), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_auto_dispatches_to_the_cpu_path_and_torch_to_the_reference(monkeypatch):
    calls = []

    def spy(*args):
        calls.append(args[0].shape)
        return group_rational_cpu(*args)

    monkeypatch.setattr(rational_module, "group_rational_cpu", spy)
    x, a, b, _ = _inputs((3, 16), 8, torch.float32)
    group_rational(x, a, b)
    assert calls == [x.shape]
    group_rational(x, a, b, backend="torch")
    monkeypatch.setenv("ZOO_BACKEND", "torch")
    group_rational(x, a, b)
    assert calls == [x.shape]


def test_empty_input_and_bad_input():
    a, b = torch.zeros(1, 6), torch.zeros(8, 4)
    y = group_rational(torch.empty(0, 16), a, b)
    assert y.shape == (0, 16)
    with pytest.raises(ValueError, match="divisible"):
        group_rational(torch.randn(2, 12), a, b)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """A failed compile (no C++ compiler, say) warns once and runs the same math eagerly from then on."""
    monkeypatch.setenv(compile_module.COMPILE_ENV_VAR, "1")
    monkeypatch.setattr(compile_module, "_COMPILE_FAILED", [])
    monkeypatch.setattr(compile_module, "_COMPILE_WORKED", [])
    monkeypatch.setattr(compile_module, "_COMPILED", {})
    monkeypatch.setattr(compile_module, "COMPILE_MIN_ELEMENTS", 0)

    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    x, a, b, dy = _inputs((4, 16), 8, torch.float32)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        actual = _run(x, a, b, dy, "auto")
    assert not compile_module.compile_enabled()
    _compare(actual, _run(x, a, b, dy, "torch"), torch.float32)


def test_autocast_keeps_bf16_activation():
    linear = torch.nn.Linear(16, 16)
    a, b = _inputs((2, 16), 8, torch.float32)[1:3]
    x = torch.randn(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        y = group_rational(h, a, b)
        y_ref = group_rational(h, a, b, backend="torch")
    assert h.dtype == y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=1e-2, atol=1e-2)


def test_inside_a_callers_torch_compile_runs_the_reference():
    x, a, b, _ = _inputs((3, 16), 8, torch.float32)
    compiled = torch.compile(lambda t: group_rational(t, a, b), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), group_rational_reference(x, a, b))


def test_jit_trace_records_the_reference():
    x, a, b, _ = _inputs((3, 16), 8, torch.float32)
    traced = torch.jit.trace(lambda t: group_rational(t, a, b), (x,), check_trace=False)
    assert "group_rational_cpu" not in str(traced.graph) and "aten::div" in str(traced.graph)
    torch.testing.assert_close(traced(x + 1), group_rational_reference(x + 1, a, b))


def test_small_calls_run_eagerly(monkeypatch):
    """Below COMPILE_MIN_ELEMENTS nothing is compiled (the compile would cost more than it saves), with the same
    results."""
    monkeypatch.setenv(compile_module.COMPILE_ENV_VAR, "1")
    monkeypatch.setattr(compile_module, "_COMPILED", {})
    x = torch.randn(3, 5, 8, requires_grad=True)
    a, b = torch.randn(1, 6, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    assert x.numel() < compile_module.COMPILE_MIN_ELEMENTS
    y = group_rational(x, a, b)
    grads = torch.autograd.grad(y.sum(), (x, a, b))
    assert compile_module._COMPILED == {}
    y_ref = group_rational_reference(x, a, b)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(grads, torch.autograd.grad(y_ref.sum(), (x, a, b)), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
