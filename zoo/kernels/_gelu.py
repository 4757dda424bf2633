"""The exact (erf) GELU inside Triton kernels: ``gelu`` and ``gelu_and_slope`` (the fused FFT convolution's
activation, UniRepLKNet's GELU + GRN).

``x Phi(x)`` with ``Phi(x) = erfc(-x / sqrt 2) / 2``, the complementary error function from the Chebyshev fit of
Numerical Recipes (``erfcc``, §6.2: ``erfc(z) = t exp(-z^2 + P(t))``, ``t = 1 / (1 + z / 2)``, P of degree 9,
fractional error below 1.2e-7 for every z >= 0), evaluated at ``z = |x| / sqrt 2``: ``Phi = e`` for x < 0 and ``1 - e``
otherwise, ``e = erfc(z) / 2`` (the 1 / 2 folded into P's constant). Branch-free: one reciprocal and one exponential
per element (two with the slope: the density's ``exp(-z^2)``). libdevice's ``erff`` selects one of two polynomials
per element (predicated moves of their coefficients): at sm_90 the GELU + GRN sums kernel's hot loop took 35
instructions per element with it and takes 26 with this (docs/design.md §22). Float32 accuracy against float64
(2M points in [-12, 12]): absolute error at most 3.8e-7, as PyTorch's float32 ``0.5 x (1 + erf(x / sqrt 2))``; for
x < -1, where ``1 + erf`` cancels, far smaller relative errors: below 1.9e-6 for x >= -4 on the interpreter (about
2.1e-6 modelled with a GPU's approximate exponential and reciprocal), where PyTorch's float32 GELU reaches 1e-3
(tests/kernels/test_gelu_grn.py checks bounds of 5e-7 and 3e-6 on both).
"""

from __future__ import annotations

from zoo.kernels._backend import tl, triton
from zoo.kernels.rational import _reciprocal


@triton.jit
def _half_erfc_parts(x, APPROX: tl.constexpr):
    """(t, -z^2, P(t) + log 1/2) at z = |x| / sqrt 2: erfc(z) / 2 = t exp(-z^2) exp(P(t) + log 1/2). P's
    coefficients are Numerical Recipes' (-1.26551223 + 1.00002368 t + ... + 0.17087277 t^9); its constant term here
    is -1.26551223 + log(1/2)."""
    z = tl.abs(x) * 0.7071067811865476
    t = _reciprocal(1.0 + 0.5 * z, APPROX)
    p = 0.17087277 * t - 0.82215223
    p = p * t + 1.48851587
    p = p * t - 1.13520398
    p = p * t + 0.27886807
    p = p * t - 0.18628806
    p = p * t + 0.09678418
    p = p * t + 0.37409196
    p = p * t + 1.00002368
    p = p * t - 1.9586594105599453
    return t, -z * z, p


@triton.jit
def gelu(x, APPROX: tl.constexpr):
    """Exact GELU ``x Phi(x)`` of fp32 ``x``. ``APPROX``: the reciprocal as ``div.approx`` (compiled kernels; the
    interpreter has no libdevice)."""
    t, minus_z2, p = _half_erfc_parts(x, APPROX)
    e = t * tl.exp(minus_z2 + p)
    return x * tl.where(x < 0.0, e, 1.0 - e)


@triton.jit
def gelu_and_slope(x, APPROX: tl.constexpr):
    """(GELU(x), GELU'(x) = Phi(x) + x phi(x)) of fp32 ``x``, ``phi(x) = exp(-z^2) / sqrt(2 pi)``. (Computing erfc
    as t exp(-z^2) exp(P) instead, to share the density's exponential, costs as many instructions and made Triton
    3.6 spill 8 bytes in the FFT convolution's strided backward epilogue.)"""
    t, minus_z2, p = _half_erfc_parts(x, APPROX)
    density = tl.exp(minus_z2)
    e = t * tl.exp(minus_z2 + p)
    cdf = tl.where(x < 0.0, e, 1.0 - e)
    return x * cdf, cdf + x * (0.3989422804014327 * density)
