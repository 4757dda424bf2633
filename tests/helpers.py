"""Shared test helpers: the device under test and dtype-aware comparisons."""

from __future__ import annotations

import torch

# Elementwise results computed in fp32 and rounded to the dtype: a couple of units in the last place.
TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}

# Kernels run on the GPU where there is one, else on the CPU through the Triton interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    """Elementwise comparison with the tolerance of ``dtype`` (``scale`` widens the absolute part)."""
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=tol["rtol"], atol=tol["atol"] * scale, check_dtype=False
    )


def assert_relative_error(actual: torch.Tensor, expected: torch.Tensor, bound: float) -> None:
    """||actual - expected|| / ||expected|| <= bound (for reductions, where summation order differs)."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f"non-finite values in {actual}"
    error = (actual - expected).norm() / expected.norm().clamp_min(1e-30)
    assert error <= bound, f"relative error {error:.3e} > {bound:.1e}\nactual   {actual}\nexpected {expected}"


def assert_backends_agree(layers: dict, u: torch.Tensor, grad_bound: float = 1e-4) -> None:
    """``layers["triton"]`` and ``layers["torch"]`` (same parameters) give the same float32 output, input gradient
    and parameter gradients (of the output's sum of squares) on ``u``."""
    outputs = {}
    for backend, layer in layers.items():
        x = u.clone().requires_grad_(True)
        y = layer(x)
        y.square().sum().backward()
        outputs[backend] = (y.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters()})
    y_t, dx_t, grads_t = outputs["triton"]
    y_r, dx_r, grads_r = outputs["torch"]
    assert_close(y_t, y_r, torch.float32, scale=float(y_r.abs().max()))
    assert_close(dx_t, dx_r, torch.float32, scale=float(dx_r.abs().max()))
    for name, grad in grads_r.items():
        assert_relative_error(grads_t[name], grad, grad_bound)
