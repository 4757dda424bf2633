"""zoo::s4d_kernel: the Triton Vandermonde kernels (interpreter on CPU, compiled on GPU) against the PyTorch reference
in float64, and the reference against a direct float64 evaluation of the formula of docs/semantics.md §4.1."""

from __future__ import annotations

import cmath
import math

import pytest
import torch

import zoo.kernels._backend as backend_module
from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels.ssm import s4d_kernel, s4d_kernel_backward, s4d_kernel_forward, s4d_kernel_reference

METHODS = ["zoh", "bilinear"]

# (H, N2, L): none a multiple of the interpreter's tiles (4 modes x 8 positions, 16 positions per backward
# chunk); a single mode and a length of 1; L spanning several backward chunks.
CASES = [(3, 5, 37), (1, 1, 1), (2, 9, 20)]


def _params(H: int, N2: int, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    """S4D-like parameters: dt in [1e-3, 1e-1], Re A in [-1.6, -0.25], Im A up to pi N2, C random."""
    gen = torch.Generator().manual_seed(seed)
    log_dt = torch.rand(H, generator=gen) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)
    C = torch.randn(H, N2, 2, generator=gen)
    log_A_real = torch.rand(H, N2, generator=gen) * 1.9 - 1.4
    A_imag = math.pi * torch.arange(N2).expand(H, N2) + torch.randn(H, N2, generator=gen)
    return [t.to(DEVICE, dtype) for t in (log_dt, C, log_A_real, A_imag)]


def _grads(fn, params, dK):
    leaves = [t.detach().clone().requires_grad_(True) for t in params]
    K = fn(*leaves)
    K.backward(dK)
    return K.detach(), [t.grad for t in leaves]


def _gradient_term_sizes(params, dK, L: int, method: str) -> list[float]:
    """Per parameter, the norm of sum_(h, l) |dK[h, l] d K[h, l] / d p|: the size of the terms that the parameter's
    gradient sums (float64 Jacobian of the reference). The float32 gradient's rounding is relative to it, not to the
    gradient, which can cancel to a small fraction of it (the log_dt gradient of a 2 x 20 case to 1/250)."""
    params64 = tuple(p.detach().double().cpu() for p in params)
    jacobians = torch.autograd.functional.jacobian(
        lambda *p: s4d_kernel(*p, L, method, backend="torch"), params64, vectorize=True
    )
    weights = dK.detach().double().cpu().abs().reshape(1, -1)
    return [float((weights @ j.reshape(weights.shape[1], -1).abs()).norm()) for j in jacobians]


def _spec_formula(params, L: int, method: str) -> torch.Tensor:
    """docs/semantics.md §4.1 written out with Python complex numbers in float64, one term at a time (bilinear: dA^l by
    repeated multiplication, the recurrence's impulse response)."""
    log_dt, C, log_A_real, A_imag = (t.double().cpu().tolist() for t in params)
    K = torch.zeros(len(log_dt), L, dtype=torch.float64)
    for h, ldt in enumerate(log_dt):
        dt = math.exp(ldt)
        for n, (c_re, c_im) in enumerate(C[h]):
            A = complex(-math.exp(log_A_real[h][n]), A_imag[h][n])
            c = complex(c_re, c_im)
            if method == "zoh":
                for step in range(L):
                    K[h, step] += 2 * (c * (cmath.exp(dt * A) - 1) / A * cmath.exp(dt * A * step)).real
            else:
                dA, power = (1 + dt * A / 2) / (1 - dt * A / 2), 1.0 + 0j
                for step in range(L):
                    K[h, step] += 2 * (c * dt / (1 - dt * A / 2) * power).real
                    power *= dA
    return K


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("H,N2,L", CASES, ids=str)
def test_s4d_kernel_matches_float64_reference(H, N2, L, method):
    params = _params(H, N2)
    dK = torch.randn(H, L, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    K, grads = _grads(lambda *p: s4d_kernel(*p, L, method, backend="triton"), params, dK)
    K64, grads64 = _grads(
        lambda *p: s4d_kernel(*p, L, method, backend="torch"), [p.double() for p in params], dK.double()
    )
    assert K.dtype == torch.float32 and K.shape == (H, L)
    assert_close(K, K64, torch.float32, scale=float(K64.abs().max().clamp_min(1.0)))
    terms = _gradient_term_sizes(params, dK, L, method)
    for name, g, g64, size in zip(("log_dt", "C", "log_A_real", "A_imag"), grads, grads64, terms, strict=True):
        assert g.dtype == torch.float32 and g.shape == g64.shape, name
        assert_relative_error(g, g64, 1e-4, floor=size)  # size >= |g64|: the error relative to the terms


@pytest.mark.parametrize("method", METHODS)
def test_reference_equals_the_spec_formula(method):
    params = _params(2, 3, seed=1, dtype=torch.float64)
    expected = _spec_formula(params, 25, method)
    torch.testing.assert_close(s4d_kernel_reference(*params, 25, method).cpu(), expected, rtol=1e-10, atol=1e-10)
    K = s4d_kernel(*(p.float() for p in params), 25, method, backend="triton")
    torch.testing.assert_close(K.double().cpu(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("method", METHODS)
def test_large_steps_and_a_real_mode(method):
    """dt of 3 to 20: |dt A| > 2, so bilinear's 1 + dt A / 2 lies left of the imaginary axis (the reflected branch
    of the kernels' float64 argument, up to the real axis itself for a mode with A_imag = 0: angle pi, as the
    reference's principal logarithm); ZOH's modes decay within a few steps."""
    params = _params(3, 5, seed=7)
    params[0] = torch.tensor([math.log(3.0), math.log(8.0), math.log(20.0)], device=DEVICE)
    params[3][:, 0] = 0.0
    L = 19
    dK = torch.randn(3, L, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    K, grads = _grads(lambda *p: s4d_kernel(*p, L, method, backend="triton"), params, dK)
    K64, grads64 = _grads(
        lambda *p: s4d_kernel(*p, L, method, backend="torch"), [p.double() for p in params], dK.double()
    )
    assert_close(K, K64, torch.float32, scale=float(K64.abs().max().clamp_min(1.0)))
    for g, g64 in zip(grads, grads64, strict=True):
        assert_relative_error(g, g64, 1e-4)


def test_long_kernel_stays_accurate():
    """exp(dtA l) is evaluated directly at every l: at L = 2000 with slowly decaying, fast rotating modes the
    errors of K and of every gradient stay at the float32 rounding of z l, within twice those of the complex64
    reference (the scalar d log_dt sums cancelling terms: both lose digits there)."""
    params = _params(1, 3, seed=2)
    params[0] = torch.tensor([math.log(0.05)], device=DEVICE)
    params[2] = torch.full((1, 3), math.log(1e-3), device=DEVICE)  # slowly decaying modes: K is large at l = L
    params[3] = torch.tensor([[0.3, 17.0, 60.0]], device=DEVICE)
    L = 2000
    dK = torch.randn(1, L, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    K, grads = _grads(lambda *p: s4d_kernel(*p, L, backend="triton"), params, dK)
    K32, grads32 = _grads(lambda *p: s4d_kernel(*p, L, backend="torch"), params, dK)
    K64, grads64 = _grads(lambda *p: s4d_kernel(*p, L, backend="torch"), [p.double() for p in params], dK.double())

    def error(a, b):
        return float((a.double() - b).norm() / b.norm())

    assert error(K[:, -100:], K64[:, -100:]) <= 2e-4
    for name, ours, ref32, ref64 in zip(
        ("K", "log_dt", "C", "log_A_real", "A_imag"), (K, *grads), (K32, *grads32), (K64, *grads64), strict=True
    ):
        assert error(ours, ref64) <= max(2 * error(ref32, ref64), 1e-5), name


def test_non_contiguous_inputs():
    H, N2, L = 3, 6, 21
    params = _params(H, N2, seed=3)
    wide_C = torch.randn(H, 2 * N2, 2, device=DEVICE)
    wide_C[:, ::2] = params[1]
    strided = [params[0], wide_C[:, ::2], params[2].t().contiguous().t(), params[3].t().contiguous().t()]
    assert not strided[1].is_contiguous() and not strided[2].is_contiguous()
    dK = torch.randn(L, H, device=DEVICE).t()  # grad_K with strides (1, H)
    K, grads = _grads(lambda *p: s4d_kernel(*p, L, backend="triton"), strided, dK)
    K64, grads64 = _grads(lambda *p: s4d_kernel(*p, L, backend="torch"), [p.double() for p in params], dK.double())
    assert_close(K, K64, torch.float32, scale=float(K64.abs().max()))
    for g, g64 in zip(grads, grads64, strict=True):
        assert_relative_error(g, g64, 1e-4)
    direct = s4d_kernel_backward(dK, *strided, L)
    for g, g64 in zip(direct, grads64, strict=True):
        assert_relative_error(g, g64, 1e-4)


def test_bad_inputs_raise_clear_errors():
    log_dt, C, log_A_real, A_imag = _params(3, 4)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=r"C must have shape \[H, N2, 2\] = \[3, N2, 2\].*got \[3, 4\]"):
            s4d_kernel(log_dt, C[..., 0], log_A_real, A_imag, 8, backend=backend)
        with pytest.raises(ValueError, match=r"log_A_real must have shape \[H, N2\] = \[3, 4\], got \[3, 5\]"):
            s4d_kernel(log_dt, C, torch.randn(3, 5, device=DEVICE), A_imag, 8, backend=backend)
        with pytest.raises(ValueError, match=r"log_dt must have shape \[H\], got \[3, 1\]"):
            s4d_kernel(log_dt[:, None], C, log_A_real, A_imag, 8, backend=backend)
        with pytest.raises(ValueError, match="L must be a positive int, got 0"):
            s4d_kernel(log_dt, C, log_A_real, A_imag, 0, backend=backend)
        with pytest.raises(ValueError, match="method must be one of"):
            s4d_kernel(log_dt, C, log_A_real, A_imag, 8, "euler", backend=backend)
        with pytest.raises(TypeError, match="A_imag must have a real floating-point dtype"):
            s4d_kernel(log_dt, C, log_A_real, A_imag.long(), 8, backend=backend)
    with pytest.raises(TypeError, match=r"takes log_dt in torch.float32.*use backend='torch'"):
        s4d_kernel(log_dt.double(), C.double(), log_A_real.double(), A_imag.double(), 8, backend="triton")
    with pytest.raises(ValueError, match=r"grad_K must have the output's shape \[H, L\] = \[3, 8\], got \[3, 7\]"):
        s4d_kernel_backward(torch.randn(3, 7, device=DEVICE), log_dt, C, log_A_real, A_imag, 8)
    with pytest.raises(ValueError, match="one device"):
        s4d_kernel_forward(log_dt, C.to("meta"), log_A_real, A_imag, 8)


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        s4d_kernel(*(p.cpu() for p in _params(2, 2)), 4, backend="triton")


def test_auto_backend_uses_the_reference_for_float64():
    params = _params(2, 3, dtype=torch.float64)
    assert s4d_kernel(*params, 6).dtype == torch.float64


@pytest.mark.parametrize("method", METHODS)
def test_opcheck(method):
    params = [p.requires_grad_() for p in _params(2, 5, seed=4)]
    torch.library.opcheck(torch.ops.zoo.s4d_kernel.default, (*params, 11, method))
    dK = torch.randn(2, 11, device=DEVICE)
    torch.library.opcheck(torch.ops.zoo.s4d_kernel_backward.default, (dK, *(p.detach() for p in params), 11, method))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_fullgraph(backend):
    params = _params(2, 5, seed=5)
    weight = torch.randn(2, 13, device=DEVICE)

    def fn(log_dt, C, log_A_real, A_imag):
        return (s4d_kernel(log_dt, C * 2.0, log_A_real, A_imag, 13, backend=backend) * weight).sum(0)

    eager = [p.clone().requires_grad_() for p in params]
    compiled = [p.clone().requires_grad_() for p in params]
    expected = fn(*eager)
    expected.sum().backward()
    y = torch.compile(fn, fullgraph=True)(*compiled)
    y.sum().backward()
    assert_close(y, expected, torch.float32, scale=float(expected.detach().abs().max()))
    for e, c in zip(eager, compiled, strict=True):
        assert_relative_error(c.grad, e.grad, 1e-5)


def test_compile_with_dynamic_length_feeding_fftconv():
    """The S4D layer's pattern: L taken from the input's shape (a SymInt under dynamic shapes), K fed to fftconv."""
    from zoo.kernels.fftconv import fftconv

    params = _params(3, 4, seed=7)
    D = torch.randn(3, device=DEVICE)

    def fn(u, log_dt, C, log_A_real, A_imag):
        K = s4d_kernel(log_dt, C, log_A_real, A_imag, u.shape[-1], backend="triton")
        return fftconv(u, K, D, activation="gelu", backend="triton")

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for L in (9, 14):
        u = torch.randn(2, 3, L, device=DEVICE)
        expected = fn(u, *params)
        assert_close(compiled(u, *params), expected, torch.float32, scale=float(expected.abs().max()))


def test_autocast_keeps_float32():
    """The SSM parameters and K stay float32 under autocast (both backends)."""
    params = _params(2, 3, seed=8)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        K_torch = s4d_kernel(*params, 10, backend="torch")
        K_triton = s4d_kernel(*params, 10, backend="triton")
    assert K_torch.dtype == K_triton.dtype == torch.float32
    assert_close(K_triton, K_torch, torch.float32, scale=float(K_torch.abs().max()))


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_gpu_model_sizes_match_reference(method):
    params = _params(256, 32, seed=6)
    L = 4096
    dK = torch.randn(256, L, device=DEVICE)
    K, grads = _grads(lambda *p: s4d_kernel(*p, L, method, backend="triton"), params, dK)
    K64, grads64 = _grads(
        lambda *p: s4d_kernel(*p, L, method, backend="torch"), [p.double() for p in params], dK.double()
    )
    # K = 2 Re sum C' exp(l z): the fp32 rounding of z (for bilinear the log of a complex ratio, two roundings
    # more than ZOH's dt A) is multiplied by l, up to 4096 here; the H200 measured 1.2e-5 for bilinear
    assert_relative_error(K, K64, 3e-5)
    for g, g64 in zip(grads, grads64, strict=True):
        assert_relative_error(g, g64, 1e-4)
