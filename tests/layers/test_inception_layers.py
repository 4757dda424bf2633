"""InceptionDWConv2d: timm's parameter layout and outputs, backends, factory arguments, bad arguments and input."""

from __future__ import annotations

import pytest
import torch
from timm.models import get_notrace_modules
from timm.models.inception_next import InceptionDWConv2d as TimmInceptionDWConv2d

from tests.helpers import DEVICE, assert_close
from zoo.layers import InceptionDWConv2d

CONFIGS = {  # id: (channels, keyword arguments): the tiny/small/base mixer and the atto mixer
    "default": (96, {}),
    "atto": (40, dict(band_kernel_size=9, branch_ratio=0.25)),
}


def _pair(channels: int, backend: str = "torch", **kwargs) -> tuple[InceptionDWConv2d, TimmInceptionDWConv2d]:
    """Ours and timm's mixer with the same (random, non-zero) weights and biases."""
    torch.manual_seed(0)
    ours = InceptionDWConv2d(channels, backend=backend, **kwargs)
    for p in ours.parameters():
        torch.nn.init.normal_(p)
    timm_mixer = TimmInceptionDWConv2d(channels, **kwargs)
    timm_mixer.load_state_dict(ours.state_dict(), strict=True)
    return ours, timm_mixer


@pytest.mark.parametrize("config", list(CONFIGS))
def test_keys_and_shapes_equal_timms(config):
    channels, kwargs = CONFIGS[config]
    ours, timm_mixer = _pair(channels, **kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in timm_mixer.state_dict().items()
    }
    gc = channels // 8 if config == "default" else channels // 4
    band = 11 if config == "default" else 9
    assert ours.split_indexes == timm_mixer.split_indexes == (channels - 3 * gc, gc, gc, gc)
    assert ours.dwconv_hw.weight.shape == (gc, 1, 3, 3) and ours.dwconv_hw.bias.shape == (gc,)
    assert ours.dwconv_w.weight.shape == (gc, 1, 1, band) and ours.dwconv_h.weight.shape == (gc, 1, band, 1)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_torch_backend_equals_timms_mixer(config, channels_last):
    channels, kwargs = CONFIGS[config]
    ours, timm_mixer = _pair(channels, **kwargs)
    x = torch.randn(2, channels, 9, 13)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x_ours, x_timm = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_timm = ours(x_ours), timm_mixer(x_timm)
    assert y_ours.shape == x.shape
    torch.testing.assert_close(y_ours, y_timm)
    grad = torch.randn_like(y_ours)
    y_ours.backward(grad)
    y_timm.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_timm.grad)
    for (name, p), q in zip(ours.named_parameters(), timm_mixer.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize(
    "channels,kwargs,channels_last",
    [(16, {}, False), (12, dict(band_kernel_size=9, branch_ratio=0.25), False), (16, {}, True)],
    ids=["C16-band11", "C12-band9-ratio0.25", "C16-band11-channels_last"],
)
def test_triton_backend_equals_torch_backend(channels, kwargs, channels_last, monkeypatch):
    """The fused kernel (the Triton interpreter on CPU) against the split/conv/cat reference, forward and every
    gradient; a 5x7 map is smaller than the 11-tap band, so the zero padding is exercised too."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the reference's convolutions in fp32 on a GPU
    reference, _ = _pair(channels, backend="torch", **kwargs)
    fused = InceptionDWConv2d(channels, backend="triton", **kwargs)
    fused.load_state_dict(reference.state_dict())
    reference.to(DEVICE)
    fused.to(DEVICE)
    x = torch.randn(1, channels, 5, 7, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_fused = reference(x_ref), fused(x_fused)
    assert_close(y_fused, y_ref, torch.float32)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_fused.backward(grad)
    assert_close(x_fused.grad, x_ref.grad, torch.float32)
    for p, q in zip(reference.parameters(), fused.parameters(), strict=True):
        assert_close(q.grad, p.grad, torch.float32, scale=10.0)  # weight gradients: sums over positions


def test_backend_reaches_the_op():
    mixer = InceptionDWConv2d(16, backend="cuda-please")
    with pytest.raises(ValueError, match="backend must be one of"):
        mixer(torch.randn(1, 16, 4, 4))


def test_factory_arguments_and_repr():
    mixer = InceptionDWConv2d(16, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in mixer.parameters())
    assert all(p.is_meta for p in InceptionDWConv2d(16, device="meta").parameters())
    assert "split=(10, 2, 2, 2)" in repr(mixer) and "backend='auto'" in repr(mixer)
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    assert mixer(x).dtype == torch.float64


def test_registered_as_an_fx_leaf():
    assert InceptionDWConv2d in get_notrace_modules()


def test_bad_arguments():
    with pytest.raises(ValueError, match="supports only dilation=1"):
        InceptionDWConv2d(96, dilation=2)  # what MetaNeXt passes for output_stride 16
    with pytest.raises(ValueError, match="band_kernel_size must be an odd positive int"):
        InceptionDWConv2d(96, band_kernel_size=10)
    with pytest.raises(ValueError, match="square_kernel_size must be an odd positive int"):
        InceptionDWConv2d(96, square_kernel_size=0)
    with pytest.raises(ValueError, match=r"branch_ratio=0.4 gives 38 channels per branch for in_chans=96"):
        InceptionDWConv2d(96, branch_ratio=0.4)
    with pytest.raises(ValueError, match=r"gives 0 channels per branch for in_chans=4"):
        InceptionDWConv2d(4)
    with pytest.raises(ValueError, match="in_chans must be a positive int"):
        InceptionDWConv2d(0)


def test_bad_input_names_the_expected_layout():
    mixer = InceptionDWConv2d(16)
    with pytest.raises(ValueError, match=r"expects input \[N, C, H, W\] .* C = in_chans = 16, got shape \[16, 5, 5\]"):
        mixer(torch.randn(16, 5, 5))
    with pytest.raises(ValueError, match=r"C = in_chans = 16, got shape \[1, 8, 5, 5\]"):
        mixer(torch.randn(1, 8, 5, 5))
