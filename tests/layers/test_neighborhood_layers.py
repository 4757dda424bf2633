"""NeighborhoodAttention1D/2D/3D: parameter names and shapes of the NAT checkpoints, the computation written out
with the reference op, padding of small inputs, both backends, attention dropout, bad input, FX."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import DEVICE, assert_close
from zoo.kernels.neighborhood import na_reference
from zoo.layers import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

LAYERS = {1: NeighborhoodAttention1D, 2: NeighborhoodAttention2D, 3: NeighborhoodAttention3D}


def test_parameters_are_named_as_in_the_nat_checkpoints():
    layer = NeighborhoodAttention2D(64, 2, kernel_size=7)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "qkv.weight": (192, 64),
        "qkv.bias": (192,),
        "rpb": (2, 13, 13),
        "proj.weight": (64, 64),
        "proj.bias": (64,),
    }
    assert set(NeighborhoodAttention1D(32, 2, 5, qkv_bias=False, rel_pos_bias=False).state_dict()) == {
        "qkv.weight",
        "proj.weight",
        "proj.bias",
    }
    assert NeighborhoodAttention3D(32, 2, (3, 5, 7)).rpb.shape == (2, 5, 9, 13)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_layer_is_qkv_attention_proj(dims):
    """The layer equals the computation written out: qkv projection, heads, neighborhood attention (reference
    op, explicit scale), merge heads, projection."""
    torch.manual_seed(dims)
    spatial = {1: (11,), 2: (6, 7), 3: (4, 5, 6)}[dims]
    layer = LAYERS[dims](32, 2, kernel_size=3, dilation=(1,) * (dims - 1) + (2,), qk_scale=0.3).eval()
    x = torch.randn(2, *spatial, 32)
    q, k, v = (layer.qkv(x).reshape(2, *spatial, 3, 2, 16)).unbind(-3)
    attn = na_reference(q, k, v, 3, (1,) * (dims - 1) + (2,), False, layer.rpb, scale=0.3)
    expected = layer.proj(attn.reshape(2, *spatial, 32))
    torch.testing.assert_close(layer(x), expected)


def test_small_inputs_are_padded_and_cropped():
    """An axis shorter than kernel x dilation is zero-padded at its end before qkv and the output cropped: the
    legacy NATTEN behaviour of the released NAT / DiNAT models."""
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(32, 2, kernel_size=7, dilation=1).eval()
    x = torch.randn(1, 5, 9, 32)
    padded = F.pad(x, (0, 0, 0, 0, 0, 2))  # H 5 -> 7, W 9 fits
    expected = layer(padded)[:, :5]
    torch.testing.assert_close(layer(x), expected)
    assert layer(x).shape == x.shape


def test_backends_agree():
    torch.manual_seed(1)
    layer = NeighborhoodAttention2D(32, 2, kernel_size=3, dilation=(2, 1)).eval().to(DEVICE)
    x = torch.randn(1, 6, 5, 32, device=DEVICE)
    layer.backend = "torch"
    expected = layer(x)
    layer.backend = "triton"
    assert_close(layer(x), expected, torch.float32)


def test_causal_layer_needs_no_bias_and_does_not_look_ahead():
    with pytest.raises(ValueError, match="rel_pos_bias cannot be used with causal"):
        NeighborhoodAttention1D(32, 2, 5, is_causal=True)
    torch.manual_seed(2)
    layer = NeighborhoodAttention1D(32, 2, 5, is_causal=True, rel_pos_bias=False).eval()
    x = torch.randn(1, 12, 32)
    y = layer(x)
    x2 = x.clone()
    x2[:, 8:] = torch.randn(1, 4, 32)
    torch.testing.assert_close(layer(x2)[:, :8], y[:, :8])


def test_attention_dropout_runs_in_training_only():
    torch.manual_seed(3)
    layer = NeighborhoodAttention2D(32, 2, kernel_size=3, attn_drop=0.5)
    x = torch.randn(1, 5, 5, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    layer.backend = "triton"
    with pytest.raises(ValueError, match="no attention dropout"):
        layer(x)


def test_bad_inputs_raise_clear_errors():
    layer = NeighborhoodAttention2D(32, 2, kernel_size=3)
    with pytest.raises(ValueError, match=r"NeighborhoodAttention2D expects \[B, X0, X1, dim=32\] \(channels last\)"):
        layer(torch.randn(1, 32, 5, 5)[:, :, :, :4])
    with pytest.raises(ValueError, match=r"expects \[B, X0, X1, dim=32\]"):
        layer(torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        NeighborhoodAttention2D(30, 4, 3)
    with pytest.raises(ValueError, match="odd and >= 3"):
        NeighborhoodAttention2D(32, 2, 4)
    with pytest.raises(ValueError, match=r"kernel_size must be one value or 2"):
        NeighborhoodAttention2D(32, 2, (3, 3, 3))


def test_fx_traces_the_layer_as_a_leaf():
    """Registered as a leaf, the layer (which checks shapes in Python) survives timm's FX feature extraction."""
    from timm.layers import get_notrace_modules
    from timm.models import create_feature_extractor

    assert all(cls in get_notrace_modules() for cls in LAYERS.values())
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), NeighborhoodAttention2D(32, 2, 3)).eval()
    extractor = create_feature_extractor(model, {"1": "out"})
    x = torch.randn(1, 5, 5, 32)
    torch.testing.assert_close(extractor(x)["out"], model(x))
