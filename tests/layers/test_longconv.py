"""zoo.layers.LongConv: the plain formula of docs/semantics.md §4.5 (explicit moving average, squash, direct
convolution, float64), the order of the kernel's regularisations, safari's key layout, the ``_optim`` hints,
padding masks and the input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import LongConv
from zoo.layers.longconv import squash
from zoo.training.optim import param_groups


def _randomise(layer: LongConv, seed: int = 0, scale: float = 0.05) -> LongConv:
    """Kernel entries well above the squash threshold (a trained state), random D and output linear."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.kernel.kernel.copy_(torch.randn(layer.kernel.kernel.shape, generator=g) * scale)
        layer.D.copy_(torch.randn(layer.D.shape, generator=g))
        linear = layer.output_linear[0]
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) / math.sqrt(linear.weight.shape[1]))
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=g) * 0.1)
    return layer


def _moving_average(k: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over the window centred on each tap, zeros outside the kernel counted (a plain loop)."""
    out = torch.zeros_like(k)
    n = k.shape[-1]
    for i in range(n):
        lo, hi = max(0, i - window // 2), min(n, i + window // 2 + 1)
        out[..., i] = k[..., lo:hi].sum(-1) / window
    return out


def _layer_formula(layer: LongConv, u: torch.Tensor) -> torch.Tensor:
    """docs/semantics.md §4.5 in float64 (eval mode: no kernel dropout): smoothing, squash, a direct Toeplitz
    convolution per channel (+ the anti-causal kernel, S4's lags), D skip, GELU, channels stacked c*H + h, linear,
    GLU."""
    k = layer.kernel.kernel.double()
    if layer.kernel.smooth_window:
        k = _moving_average(k, layer.kernel.smooth_window)
    k = torch.sign(k) * torch.clamp(k.abs() - layer.kernel.lam, min=0.0)
    L, l_max = u.shape[-1], layer.l_max
    u = u.double()
    t = torch.arange(L)
    lag = t[:, None] - t[None, :]  # [t, s] = t - s
    outputs = []
    for c in range(layer.channels):
        causal_taps = F.pad(k[c, :, :l_max], (0, max(0, L - l_max)))
        y = torch.einsum(
            "hts,bhs->bht", torch.where(lag >= 0, causal_taps[:, lag.clamp(min=0)], 0.0) * (lag < l_max), u
        )
        if layer.bidirectional:  # y[t] += sum_{s > t} k1[s - t - 1] u[s], k1 = the second half read backwards
            anti_taps = F.pad(k[c, :, l_max:].flip(-1), (0, max(0, L - l_max)))
            anti = torch.where(lag < 0, anti_taps[:, (-lag - 1).clamp(min=0)], 0.0) * (-lag - 1 < l_max)
            y = y + torch.einsum("hts,bhs->bht", anti, u)
        outputs.append(F.gelu(y + layer.D.double()[c][:, None] * u))
    y = torch.cat(outputs, dim=1)  # [B, C*H, L]
    linear = layer.output_linear[0]
    z = torch.einsum("oi,bil->bol", linear.weight.double(), y) + linear.bias.double()[:, None]
    H = layer.h
    return z[:, :H] * torch.sigmoid(z[:, H:])


@pytest.mark.parametrize("L", [13, 29], ids=["L<l_max", "L>l_max"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("transposed", [True, False], ids=["BHL", "BLH"])
def test_layer_equals_the_formula(transposed, bidirectional, channels, L):
    torch.manual_seed(0)
    layer = LongConv(
        6, l_max=20, channels=channels, bidirectional=bidirectional, transposed=transposed, backend="torch"
    ).eval()
    _randomise(layer)
    u = torch.randn(3, 6, L)
    with torch.no_grad():
        y = layer(u if transposed else u.transpose(1, 2))
        y = y if transposed else y.transpose(1, 2)
        expected = _layer_formula(layer, u)
    assert y.dtype == torch.float32 and y.shape == (3, 6, L)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)


def test_without_smoothing_the_formula_still_holds():
    layer = _randomise(LongConv(4, l_max=16, smooth_window=None, backend="torch").eval(), seed=2)
    assert layer.kernel.smooth_window is None
    u = torch.randn(2, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(u).double(), _layer_formula(layer, u), atol=1e-5, rtol=1e-5)


def test_smoothing_comes_before_the_squash_and_dropout_after():
    lam, window = 0.003, 7
    kernel = LongConv(1, l_max=32, channels=1, lam=lam, smooth_window=window, kernel_dropout=0.5).kernel
    with torch.no_grad():
        kernel.kernel.zero_()
        kernel.kernel[0, 0, 10] = 0.07  # a spike: smoothed 0.01 over 7 taps, then squashed to 0.007
    kernel.eval()
    k = kernel()
    expected = torch.zeros(1, 1, 32)
    expected[0, 0, 7:14] = 0.01 - lam
    torch.testing.assert_close(k, expected)
    # the other order would give (0.07 - lam) / 7 = 0.00957 per tap
    assert not torch.allclose(k, _moving_average(squash(kernel.kernel.detach(), lam), window))
    kernel.train()  # dropout on the regularised kernel: each entry 0 or squash(smooth(k)) / (1 - p)
    torch.manual_seed(0)
    dropped = kernel()
    kept = dropped != 0
    assert kept[0, 0, 7:14].any() and not kept[0, 0, 7:14].all() and not kept[0, 0, :7].any()
    torch.testing.assert_close(dropped[kept], expected[kept] * 2)


def test_init_and_safari_key_layout_load_strictly():
    H, L, C = 5, 12, 2
    torch.manual_seed(0)
    layer = LongConv(H, l_max=L, channels=C)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "kernel.kernel": (C, H, L),
        "D": (C, H),
        "output_linear.0.weight": (2 * H, C * H),
        "output_linear.0.bias": (2 * H,),
    }
    big = LongConv(64, l_max=256, channels=2).kernel.kernel
    assert abs(big.std().item() - 0.002) < 1e-4 and abs(big.mean().item()) < 1e-4  # randn * 0.002
    bidirectional = LongConv(H, l_max=L, channels=C, bidirectional=True).state_dict()
    assert bidirectional["kernel.kernel"].shape == (C, H, 2 * L) and bidirectional["D"].shape == (C, H)
    official = {k: torch.randn(v) for k, v in shapes.items()}
    layer.load_state_dict(official, strict=True)


def test_kernel_carries_optim_and_param_groups_honour_it():
    layer = LongConv(4, l_max=8, kernel_lr=0.0005)
    assert layer.kernel.kernel._optim == {"lr": 0.0005, "weight_decay": 0.0}
    assert not hasattr(layer.D, "_optim")
    groups = param_groups(layer, weight_decay=0.05)
    kernel = [g for g in groups if g.get("lr") == 0.0005]
    assert len(kernel) == 1 and kernel[0]["weight_decay"] == 0.0 and kernel[0]["param_names"] == ["kernel.kernel"]
    assert LongConv(4, l_max=8, kernel_lr=None).kernel.kernel._optim == {"weight_decay": 0.0}


def test_gradients_flow_to_every_parameter():
    layer = _randomise(LongConv(4, l_max=10, bidirectional=True, backend="torch"))
    layer(torch.randn(2, 4, 10)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_padding_is_never_read(bidirectional):
    """Valid positions do not change when the padding's content changes or more padding is appended."""
    torch.manual_seed(0)
    layer = _randomise(LongConv(4, l_max=16, bidirectional=bidirectional, backend="torch").eval())
    u = torch.randn(2, 4, 12)
    lengths = torch.tensor([12, 7])
    noisy = u.clone()
    noisy[1, :, 7:] = 100.0
    longer = torch.cat([u, torch.randn(2, 4, 4)], dim=-1)
    with torch.no_grad():
        y = layer(u, lengths)
        torch.testing.assert_close(layer(noisy, lengths)[1, :, :7], y[1, :, :7])
        torch.testing.assert_close(layer(longer, lengths)[1, :, :7], y[1, :, :7], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer(longer, lengths)[0, :, :12], y[0, :, :12], atol=1e-6, rtol=1e-5)
        alone = layer(u[1:, :, :7])  # the sequence without any padding
        torch.testing.assert_close(y[1:, :, :7], alone, atol=1e-6, rtol=1e-5)
        if bidirectional:  # without the mask the anti-causal kernel reads the padding
            assert not torch.allclose(layer(noisy)[1, :, :7], y[1, :, :7])


def test_bad_inputs_raise_clear_errors():
    layer = LongConv(4, l_max=8)
    with pytest.raises(ValueError, match=r"3-D input \[B, H, L\]"):
        layer(torch.randn(4, 10))
    with pytest.raises(ValueError, match="H = d_model = 4"):
        layer(torch.randn(2, 5, 10))
    with pytest.raises(ValueError, match=r"\[B, L, H\]"):
        LongConv(4, l_max=8, transposed=False)(torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match=r"lengths as an integer tensor \[B\] = \[2\]"):
        layer(torch.randn(2, 4, 10), torch.tensor([3]))
    with pytest.raises(ValueError, match="integer lengths"):
        layer(torch.randn(2, 4, 10), torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match="smooth_window must be an odd"):
        LongConv(4, l_max=8, smooth_window=4)
    with pytest.raises(ValueError, match="l_max must be a positive int"):
        LongConv(4, l_max=0)
    with pytest.raises(ValueError, match="kernel_dropout"):
        LongConv(4, l_max=8, kernel_dropout=1.0)
    with pytest.raises(ValueError, match="lam"):
        LongConv(4, l_max=8, lam=-0.1)


def test_autocast_keeps_the_kernel_in_fp32():
    layer = LongConv(4, l_max=16, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(2, 4, 16))
    assert y.shape == (2, 4, 16) and torch.isfinite(y).all()
    assert layer.kernel.kernel.dtype == torch.float32 and layer.kernel().dtype == torch.float32


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_triton_backend_matches_torch_backend(bidirectional):
    """The layer on the Triton FFT-convolution epilogues (interpreter on a CPU) gives the reference's output and
    gradients."""
    from tests.helpers import DEVICE, assert_backends_agree

    layers = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(5)
        layers[backend] = _randomise(LongConv(4, l_max=9, bidirectional=bidirectional, backend=backend), seed=5)
        layers[backend].to(DEVICE).eval()
    u = torch.randn(2, 4, 11, device=DEVICE)
    assert_backends_agree(layers, u)
