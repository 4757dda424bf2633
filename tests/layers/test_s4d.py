"""zoo.layers.S4D: the plain formula of docs/semantics.md §4.4 (explicit Vandermonde + direct convolution,
float64), recurrent step mode, inits, the official key layout, the ``_optim`` hints and the input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.layers import S4D, S4D_INITS, s4d_init
from zoo.training.optim import param_groups


def _randomise(layer: S4D, seed: int = 0) -> S4D:
    """Random SSM parameters (not the init's structure), so that the checks cover any trained state."""
    g = torch.Generator().manual_seed(seed)
    k = layer.kernel
    with torch.no_grad():
        k.log_dt.copy_(torch.empty_like(k.log_dt).uniform_(math.log(0.01), math.log(0.3), generator=g))
        k.log_A_real.copy_(torch.empty_like(k.log_A_real).uniform_(-1.5, 0.5, generator=g))
        k.A_imag.copy_(torch.empty_like(k.A_imag).uniform_(0.0, 20.0, generator=g))
        k.C.copy_(torch.randn(k.C.shape, generator=g))
        layer.D.copy_(torch.randn(layer.D.shape, generator=g))
        conv = layer.output_linear[0]
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / math.sqrt(layer.h))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
    return layer


def _kernel_formula(log_dt, C, log_A_real, A_imag, L):
    """K[h, l] = 2 Re(sum_n C (exp(dtA) - 1) / A exp(dtA l)) by an explicit [H, N/2, L] Vandermonde, complex128."""
    dt = torch.exp(log_dt.double())
    A = -torch.exp(log_A_real.double()) + 1j * A_imag.double()
    c = torch.view_as_complex(C.double().contiguous())
    dtA = A * dt[:, None]
    vandermonde = torch.exp(dtA[:, :, None] * torch.arange(L, dtype=torch.float64))
    return 2 * torch.einsum("hn,hnl->hl", c * (torch.exp(dtA) - 1) / A, vandermonde).real


def _layer_formula(layer: S4D, u: torch.Tensor) -> torch.Tensor:
    """The layer of docs/semantics.md §4.4 in float64 with a direct (Toeplitz) convolution; u [B, H, L]."""
    H, L = layer.h, u.shape[-1]
    k = layer.kernel
    K = _kernel_formula(k.log_dt, k.C, k.log_A_real, k.A_imag, L)
    u = u.double()
    t = torch.arange(L)
    lag = t[:, None] - t[None, :]  # [t, s] = t - s
    causal = torch.where(lag >= 0, K[:H, lag.clamp(min=0)], 0.0)  # [H, t, s]
    y = torch.einsum("hts,bhs->bht", causal, u)
    if layer.bidirectional:  # S4's anti-causal half: y[t] += sum_{s > t} K1[s - t - 1] u[s]
        anti = torch.where(lag < 0, K[H:, (-lag - 1).clamp(min=0)], 0.0)
        y = y + torch.einsum("hts,bhs->bht", anti, u)
    y = F.gelu(y + layer.D.double()[:, None] * u)
    conv = layer.output_linear[0]
    z = torch.einsum("oh,bhl->bol", conv.weight.double()[:, :, 0], y) + conv.bias.double()[:, None]
    return z[:, :H] * torch.sigmoid(z[:, H:])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("transposed", [True, False], ids=["BHL", "BLH"])
@pytest.mark.parametrize("init", S4D_INITS)
def test_layer_equals_the_formula(init, transposed, bidirectional):
    torch.manual_seed(0)
    layer = S4D(8, d_state=12, init=init, transposed=transposed, bidirectional=bidirectional, backend="torch").eval()
    if init == "lin":
        _randomise(layer)
    u = torch.randn(3, 8, 37)
    with torch.no_grad():
        y = layer(u if transposed else u.transpose(1, 2))
        y = y if transposed else y.transpose(1, 2)
        expected = _layer_formula(layer, u)
    assert y.dtype == torch.float32 and y.shape == (3, 8, 37)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)


def test_gradients_flow_to_every_parameter():
    layer = _randomise(S4D(6, d_state=8, backend="torch"))
    layer(torch.randn(2, 6, 19)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("init", S4D_INITS)
def test_step_equals_convolution_at_every_position(init):
    torch.manual_seed(1)
    layer = S4D(8, d_state=16, init=init, backend="torch").eval()
    if init == "inv":
        _randomise(layer, seed=3)
    u = torch.randn(2, 8, 50)
    with torch.no_grad():
        y = layer(u)
        state = layer.default_state(2)
        assert state.shape == (2, 8, 8) and torch.is_complex(state) and not state.abs().any()
        outputs = []
        for t in range(u.shape[-1]):
            y_t, state = layer.step(u[:, :, t], state)
            outputs.append(y_t)
    torch.testing.assert_close(torch.stack(outputs, dim=-1), y, atol=1e-5, rtol=1e-5)


def test_step_with_untransposed_layer_and_a_fresh_state_each_time():
    layer = S4D(4, d_state=8, transposed=False, backend="torch").eval()
    u = torch.randn(1, 9, 4)
    with torch.no_grad():
        y = layer(u)
        state = layer.default_state(1, device="cpu")
        for t in range(9):
            y_t, state = layer.step(u[:, t], state)
        torch.testing.assert_close(y_t, y[:, -1], atol=1e-5, rtol=1e-5)


def test_init_values():
    N, n = 16, torch.arange(8, dtype=torch.float32)
    log_a, imag, b = s4d_init("lin", N)
    torch.testing.assert_close(log_a, torch.full((8,), math.log(0.5)))
    torch.testing.assert_close(imag, math.pi * n)
    assert torch.equal(b, torch.ones(8, dtype=torch.complex64))
    _, imag, _ = s4d_init("inv", N)
    torch.testing.assert_close(imag, (N / math.pi) * (N / (2 * n + 1) - 1))
    log_a, imag, b = s4d_init("real", N)
    torch.testing.assert_close(log_a, torch.log(n + 1))
    assert not imag.any() and torch.equal(b, torch.ones(8, dtype=torch.complex64))
    layer = S4D(3, d_state=N, init="inv")
    assert layer.kernel.A_imag.shape == (3, 8) and torch.equal(layer.kernel.A_imag[2], s4d_init("inv", N)[1])
    assert torch.all(layer.kernel.log_dt >= math.log(0.001)) and torch.all(layer.kernel.log_dt <= math.log(0.1))


def test_legs_init_is_the_normal_part_of_hippo_legs():
    N = 16
    log_a, imag, b = s4d_init("legs", N)
    torch.testing.assert_close(log_a, torch.full((8,), math.log(0.5)))
    # independent computation with NumPy: the normal part S = A + P P^T of HiPPO-LegS and its eigenvalues
    q = np.sqrt(2 * np.arange(N) + 1.0)
    A = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(N) + 1.0)
    P = np.sqrt(np.arange(N) + 0.5)
    eigenvalues = np.linalg.eigvals(A + np.outer(P, P))
    np.testing.assert_allclose(eigenvalues.real, -0.5, atol=1e-9)
    upper = np.sort(eigenvalues.imag[eigenvalues.imag > 0])
    np.testing.assert_allclose(imag.numpy(), upper, rtol=1e-5)
    # B = sqrt(2n+1) projected on the eigenvectors: conjugate pairs carry equal |V^* B|, sum |V^* B|^2 = |B|^2 = N^2
    np.testing.assert_allclose((b.abs() ** 2).sum().item(), N * N / 2, rtol=1e-5)
    # folded into C: C = randn * (V^* B)
    torch.manual_seed(0)
    layer = S4D(5, d_state=N, init="legs")
    torch.manual_seed(0)
    torch.randn(5)  # D
    torch.rand(5)  # log_dt
    expected = torch.randn(5, N // 2, dtype=torch.cfloat) * b
    torch.testing.assert_close(torch.view_as_complex(layer.kernel.C), expected)


def test_official_key_layout_loads_strictly():
    H, N = 6, 10
    official = {
        "D": torch.randn(H),
        "kernel.log_dt": torch.randn(H),
        "kernel.C": torch.randn(H, N // 2, 2),
        "kernel.log_A_real": torch.randn(H, N // 2),
        "kernel.A_imag": torch.randn(H, N // 2),
        "output_linear.0.weight": torch.randn(2 * H, H, 1),
        "output_linear.0.bias": torch.randn(2 * H),
    }
    layer = S4D(H, d_state=N)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in official.items()}
    layer.load_state_dict(official, strict=True)
    bidirectional = S4D(H, d_state=N, bidirectional=True).state_dict()
    assert bidirectional["kernel.log_dt"].shape == (2 * H,) and bidirectional["kernel.C"].shape == (2 * H, N // 2, 2)
    assert bidirectional["D"].shape == (H,) and bidirectional["output_linear.0.weight"].shape == (2 * H, H, 1)


def test_ssm_parameters_carry_optim_and_param_groups_honour_it():
    layer = S4D(4, d_state=8, lr=0.002)
    for name in ("log_dt", "log_A_real", "A_imag"):
        assert getattr(layer.kernel, name)._optim == {"lr": 0.002, "weight_decay": 0.0}
    assert not hasattr(layer.kernel.C, "_optim") and not hasattr(layer.D, "_optim")
    groups = param_groups(layer, weight_decay=0.05)
    ssm = [g for g in groups if g.get("lr") == 0.002]
    assert len(ssm) == 1 and ssm[0]["weight_decay"] == 0.0
    assert sorted(ssm[0]["param_names"]) == ["kernel.A_imag", "kernel.log_A_real", "kernel.log_dt"]
    frozen = S4D(4, d_state=8, lr=0.0)  # the official convention: lr 0 registers buffers
    assert {n for n, _ in frozen.named_parameters()} == {
        "D",
        "kernel.C",
        "output_linear.0.weight",
        "output_linear.0.bias",
    }
    assert "kernel.log_dt" in frozen.state_dict()


def test_bad_inputs_raise_clear_errors():
    layer = S4D(4, d_state=8)
    with pytest.raises(ValueError, match=r"3-D input \[B, H, L\]"):
        layer(torch.randn(4, 10))
    with pytest.raises(ValueError, match="H = d_model = 4"):
        layer(torch.randn(2, 5, 10))
    with pytest.raises(ValueError, match=r"\[B, L, H\]"):
        S4D(4, d_state=8, transposed=False)(torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match="even"):
        S4D(4, d_state=7)
    with pytest.raises(ValueError, match="init must be one of"):
        S4D(4, init="hippo")
    with pytest.raises(ValueError, match="dt_min"):
        S4D(4, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match=r"u_t of shape \[B, H\]"):
        layer.step(torch.randn(2, 4, 1), layer.default_state(2))
    with pytest.raises(ValueError, match="complex state"):
        layer.step(torch.randn(2, 4), torch.zeros(2, 4, 4))
    bidirectional = S4D(4, d_state=8, bidirectional=True)
    with pytest.raises(RuntimeError, match="bidirectional"):
        bidirectional.step(torch.randn(2, 4), torch.zeros(2, 4, 4, dtype=torch.cfloat))
    with pytest.raises(RuntimeError, match="bidirectional"):
        bidirectional.default_state(2)


def test_autocast_keeps_the_ssm_in_fp32():
    layer = S4D(4, d_state=8, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(2, 4, 16))
    assert y.shape == (2, 4, 16) and torch.isfinite(y).all()
    assert layer.kernel.log_dt.dtype == torch.float32


@pytest.mark.parametrize("bidirectional", [False, True])
def test_triton_backend_matches_torch_backend(bidirectional):
    """The layer on the Triton kernels (interpreter on a CPU) gives the reference's output and gradients."""
    from tests.helpers import DEVICE, assert_backends_agree

    torch.manual_seed(11)
    layers = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(11)
        layers[backend] = _randomise(S4D(6, d_state=8, bidirectional=bidirectional, backend=backend), seed=11)
        layers[backend].to(DEVICE).eval()
    layers["triton"].load_state_dict(layers["torch"].state_dict())
    u = torch.randn(2, 6, 13, device=DEVICE)
    assert_backends_agree(layers, u)
