"""Shared test helpers: the device under test, dtype-aware comparisons, a reduced model of every family, the
scripts as modules, the attention kernel tests' dtype matrix."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Elementwise results computed in fp32 and rounded to the dtype: a couple of units in the last place.
TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}

# A reduced member of each model family and its input (channels, side: [B, C, side, side]; the sequence models
# read pixel sequences), small enough for a few CPU training steps in a test, without dropout (torch.compile draws
# its dropout masks from another generator than eager mode does: tests/training/test_train_step.py).
REDUCED_MODELS = {
    "kat_t": (dict(embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4), (3, 16)),
    "inceptionnext_a": (dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128]), (3, 32)),
    "unireplknet_a": (dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64]), (3, 32)),
    "nat_m": (dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]), (3, 32)),
    "dinat_m": (dict(embed_dim=16, depths=[2, 2, 1, 1], num_heads=[1, 2, 2, 4]), (3, 32)),
    "s4d_t": (dict(d_model=32, n_layers=2, d_state=16, in_chans=1, dropout=0.0), (1, 8)),
    "longconv_t": (dict(d_model=32, n_layers=2, in_chans=1, l_max=64, dropout=0.0, kernel_dropout=0.0), (1, 8)),
}

# Kernels run on the GPU where there is one, else on the CPU through the Triton interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    """Elementwise comparison with the tolerance of ``dtype`` (``scale`` widens the absolute part)."""
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=tol["rtol"], atol=tol["atol"] * scale, check_dtype=False
    )


def assert_relative_error(actual: torch.Tensor, expected: torch.Tensor, bound: float, floor: float = 1e-30) -> None:
    """||actual - expected|| / max(||expected||, floor) <= bound (for reductions, where summation order differs).
    ``floor``: the size of the summed terms, for sums that can cancel to near zero (their rounding error is relative
    to the terms, not to the result)."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), f"non-finite values in {actual}"
    error = (actual - expected).norm() / expected.norm().clamp_min(floor)
    if error > bound:
        worst = (actual - expected).abs().flatten().argmax().item()
        raise AssertionError(
            f"relative error {error:.3e} > {bound:.1e} over {expected.numel()} elements; largest difference at flat "
            f"index {worst}: {actual.flatten()[worst].item():.6e} vs {expected.flatten()[worst].item():.6e}"
        )


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


# ---------------------------------------------------------------------------------------------------- models


def images(batch: int = 1, size: int = 64, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal image batch ``[batch, channels, size, size]``."""
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def count_parameters(model: torch.nn.Module) -> int:
    """The number of parameter elements of ``model`` (on any device, the meta device included)."""
    return sum(p.numel() for p in model.parameters())


# Parameter names (the last part) of layer scales and GRN terms, whose inits (1e-6, 1e-5, 0) hide what they scale.
SCALE_PARAMETERS = ("gamma", "gamma1", "gamma2", "beta")


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with non-trivial batch-norm statistics, normalisation affine terms, layer scales and
    GRN terms (see ``SCALE_PARAMETERS``), drawn from a generator seeded with ``seed``: the inits (zero means, unit
    variances and weights, scales of 1e-6) would hide whole blocks from a comparison."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(uniform(module.running_var.shape, 0.5, 1.5))
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)):
            if module.weight is not None:
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
            if module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] in SCALE_PARAMETERS:
            parameter.copy_(uniform(parameter.shape, 0.2, 0.5))
    return model.eval()


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (4-D) as "nchw" (contiguous), "channels_last", or "strided": every second column of a wider tensor, so
    that no dimension has stride 1."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.contiguous()


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as the module ``name``, loaded once per process (kept in ``sys.modules``, where
    dataclasses look their module up)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # not half a module for the next test
            raise
    return sys.modules[name]


def cpu_only_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that must run as on a machine without a GPU (the CPU smoke runs of the
    scripts): CUDA hidden, the Triton interpreter on."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1", **extra)


def attention_dtype_cases(cases: list[tuple], dtypes: list[torch.dtype], case_id: Callable[[tuple], str]) -> list:
    """``pytest.param(case, dtype)`` for the neighborhood-attention kernel tests' (spatial, heads, head_dim, kernel,
    dilation, causal, rpb) cases: every case in float32, the 2-byte dtypes on all but the 3-D cases with a bias
    (their loads, stores and conversions are the same code as the other cases'; under the interpreter such a case
    takes about a minute per dtype, mostly in the bias gradient's programs)."""
    return [
        pytest.param(case, dtype, id=f"{case_id(case)}-{dtype}")
        for case in cases
        for dtype in dtypes
        if dtype == torch.float32 or not (len(case[0]) == 3 and case[6])
    ]
