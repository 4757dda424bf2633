"""GroupRational and KAN modules: parameters, inits, backends, bad input."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.layers import KAN, GroupRational
from zoo.layers.rational import GELU_INIT_MAX_ERROR

ROOT = Path(__file__).resolve().parents[2]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def test_parameters_named_and_shaped_as_official():
    act = GroupRational(num_groups=8, init="swish")
    shapes = {k: tuple(v.shape) for k, v in act.state_dict().items()}
    assert shapes == {"weight_numerator": (1, 6), "weight_denominator": (8, 4)}
    assert all(p.dtype == torch.float32 for p in act.parameters())
    # every group starts from the same denominator
    assert (act.weight_denominator == act.weight_denominator[0]).all()


@pytest.mark.parametrize(
    "init,target,bound",
    [
        ("identity", lambda x: x, 1e-7),
        ("swish", lambda x: x * torch.sigmoid(x), 1e-5),
        ("gelu", _gelu, GELU_INIT_MAX_ERROR),  # our own fit for this form; the official one is off by > 1
    ],
)
def test_inits_approximate_their_function_on_minus3_3(init, target, bound):
    act = GroupRational(num_groups=1, init=init, backend="torch").double()
    x = torch.linspace(-3, 3, 6001, dtype=torch.float64).view(1, -1, 1)
    with torch.no_grad():
        error = (act(x) - target(x)).abs().max().item()
    assert error < bound, f"max |F - {init}| on [-3, 3] = {error:.3e}"


def test_gelu_fit_script_reaches_the_documented_error_on_a_rerun():
    """The fit may land on other coefficients on another machine (summation order); its quality must hold."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fit_gelu_rational.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    max_error = float(re.search(r"max \|F - GELU\| on \[-3.0, 3.0\] = (\S+)", run.stdout).group(1))
    assert max_error <= 1.1 * GELU_INIT_MAX_ERROR


def test_group_rational_bad_arguments():
    with pytest.raises(ValueError, match="init must be one of"):
        GroupRational(init="relu")
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        GroupRational(num_groups=0)
    with pytest.raises(ValueError, match=r"D divisible by num_groups=8, got shape \[2, 12\]"):
        GroupRational(8)(torch.randn(2, 12))


def test_kan_keys_and_shapes_match_official_layout():
    mlp = KAN(192, 768)
    shapes = {k: tuple(v.shape) for k, v in mlp.state_dict().items()}
    assert shapes == {
        "act1.weight_numerator": (1, 6),
        "act1.weight_denominator": (8, 4),
        "fc1.weight": (768, 192),
        "fc1.bias": (768,),
        "act2.weight_numerator": (1, 6),
        "act2.weight_denominator": (8, 4),
        "fc2.weight": (192, 768),
        "fc2.bias": (192,),
    }
    assert mlp.act1.init == "identity" and mlp.act2.init == "swish"
    with pytest.raises(ValueError, match="hidden_features .* divisible by num_groups"):
        KAN(16, 20)


def test_kan_is_act1_fc1_act2_fc2():
    torch.manual_seed(0)
    mlp = KAN(16, 32, act_init="gelu", backend="torch")
    x = torch.randn(2, 5, 16)
    expected = mlp.fc2(mlp.act2(mlp.fc1(mlp.act1(x))))
    assert_close(mlp(x), expected, torch.float32)
    # act1 starts as the identity
    assert_close(mlp.act1(x), x, torch.float32)


def test_kan_backends_agree_forward_and_backward():
    torch.manual_seed(1)
    mlp = KAN(16, 64).to(DEVICE)
    x = torch.randn(3, 5, 16, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        for module in (mlp.act1, mlp.act2):
            module.backend = backend
        mlp.zero_grad()
        y = mlp(x)
        y.square().sum().backward()
        results[backend] = (y.detach(), {n: p.grad.clone() for n, p in mlp.named_parameters()})
    y_torch, grads_torch = results["torch"]
    y_triton, grads_triton = results["triton"]
    assert_close(y_triton, y_torch, torch.float32)
    for name, grad in grads_torch.items():
        assert_relative_error(grads_triton[name], grad, 1e-4)
    # the identity-initialised act1 gets a denominator gradient from the first step (b = 0 exactly)
    assert (grads_triton["act1.weight_denominator"] != 0).any()


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_kan_under_autocast_act1_writes_the_autocast_dtype(backend):
    """Under autocast act1 writes fc1's compute dtype itself: the same output and gradients as casting its float32
    result (the computation it replaces), in one pass less; without autocast it keeps the input's dtype."""
    torch.manual_seed(2)
    mlp = KAN(16, 32, backend=backend)
    with torch.no_grad():
        mlp.act1.weight_denominator.add_(0.3)  # not the identity
    x = torch.randn(2, 5, 16, requires_grad=True)
    seen = []
    mlp.act1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mlp(x)
        expected_y = mlp.fc2(mlp.act2(mlp.fc1(mlp.act1(x).to(torch.bfloat16))))
    assert seen == [torch.bfloat16, torch.float32]
    torch.testing.assert_close(y, expected_y, rtol=0, atol=0)
    (gx,) = torch.autograd.grad(y.float().square().sum(), x)
    (expected_gx,) = torch.autograd.grad(expected_y.float().square().sum(), x)
    torch.testing.assert_close(gx, expected_gx, rtol=0, atol=0)
    assert mlp(x).dtype == torch.float32 and seen[-1] == torch.float32


def test_kan_under_autocast_compiles_fullgraph():
    torch.manual_seed(3)
    mlp = KAN(16, 32, backend="torch")
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = mlp(x)
        compiled = torch.compile(mlp, fullgraph=True)(x)
    assert compiled.dtype == expected.dtype == torch.bfloat16
    assert_close(compiled.float(), expected.float(), torch.bfloat16, scale=float(expected.detach().abs().max()))


def test_kan_fx_traces_with_group_rational_as_leaf():
    from timm.models import create_feature_extractor

    mlp = KAN(16, 32, backend="torch")
    extractor = create_feature_extractor(mlp, return_nodes={"act2": "hidden", "fc2": "out"})
    out = extractor(torch.randn(2, 16))
    assert out["hidden"].shape == (2, 32) and out["out"].shape == (2, 16)
