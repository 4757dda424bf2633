"""The CPU path of the depthwise convolution (zoo/kernels/dwconv/_cpu.py; what ``backend="auto"`` runs on CPU
tensors) against the reference (``backend="torch"``): the zero-padded 13 x 13 kernel on channels_last maps (values,
memory format, when it is taken), gradients through the reference, the dispatch (the InceptionNeXt mixer keeps its
reference on CPU) and UniRepLKNet's deployed block."""

from __future__ import annotations

import pytest
import torch

import zoo.kernels.dwconv._cpu as cpu_module
import zoo.kernels.dwconv.ops as ops_module
from tests.helpers import assert_relative_error, in_layout
from zoo.kernels.dwconv import dwconv2d, dwconv2d_reference, inception_dwconv2d
from zoo.kernels.dwconv._cpu import dwconv2d_cpu, padded_kernel

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

CL = torch.channels_last


def _conv_inputs(shape, k, dtype=torch.float32, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(shape[1], 1, k, k, generator=gen, dtype=torch.float64).to(torch.float32)
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64).to(torch.float32) if bias else None
    return x, w, b


@pytest.mark.parametrize("shape", [(2, 8, 16, 16), (3, 16, 9, 7), (15, 4, 3, 3)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_padded_13x13_on_channels_last_matches_reference(shape, bias):
    """The zero-padded 15 x 15 run: the reference's values (maps smaller and larger than the kernel) and its
    channels_last output."""
    x, w, b = _conv_inputs(shape, 13, bias=bias)
    x = x.contiguous(memory_format=CL)
    assert padded_kernel(x, w, (1, 1), (1, 1)) == 15
    with torch.no_grad():
        y = dwconv2d(x, w, b)
    expected = dwconv2d_reference(x.double(), w.double(), None if b is None else b.double())
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, dwconv2d(x, w, b, backend="torch"), rtol=1e-5, atol=1e-5)


def test_padded_kernel_is_taken_only_where_measured_faster():
    x, w, _ = _conv_inputs((2, 4, 8, 8), 13)
    cl = x.contiguous(memory_format=CL)
    assert padded_kernel(cl, w, (1, 1), (1, 1)) == 15
    assert padded_kernel(x, w, (1, 1), (1, 1)) is None  # NCHW: 13 x 13 is fast there
    assert padded_kernel(cl, w, (2, 2), (1, 1)) is None
    assert padded_kernel(cl, w, (1, 1), (2, 2)) is None
    assert padded_kernel(cl.double(), w, (1, 1), (1, 1)) is None
    assert padded_kernel(cl, w[..., 1:-1, 1:-1], (1, 1), (1, 1)) is None  # 11 x 11: channels_last is fast
    assert padded_kernel(cl, w[..., 1:-1], (1, 1), (1, 1)) is None  # not square
    one = torch.randn(200, 4, 1, 1).contiguous(memory_format=CL)  # both NCHW- and channels_last-contiguous
    assert padded_kernel(one, w, (1, 1), (1, 1)) is None
    small = torch.randn(1, 4, 11, 11).contiguous(memory_format=CL)  # 121 positions < MIN_POSITIONS
    assert padded_kernel(small, w, (1, 1), (1, 1)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("k, dilation, layout", [(13, 1, "channels_last"), (5, 2, "channels_last"), (3, 1, "nchw")])
def test_dwconv_gradients_match_reference(dtype, k, dilation, layout):
    """With gradients the CPU path runs the reference: the same output and gradients in x, weight and bias."""
    x, w, b = _conv_inputs((2, 6, 10, 11), k, dtype)
    x = in_layout(x, layout)
    dy = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("auto", "torch"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
        y = dwconv2d(*leaves, dilation=dilation, backend=backend)
        y.backward(dy)
        results[backend] = [y.detach()] + [leaf.grad for leaf in leaves]
    for got, want in zip(results["auto"], results["torch"], strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dwconv_other_cases_run_the_reference_unchanged():
    for k, dilation, stride, layout in [(3, 1, 1, "nchw"), (7, 2, 1, "channels_last"), (13, 1, 2, "channels_last")]:
        x, w, b = _conv_inputs((2, 4, 12, 12), k)
        x = in_layout(x, layout)
        with torch.no_grad():
            y = dwconv2d_cpu(x, w, b, stride, dilation)
            torch.testing.assert_close(y, dwconv2d_reference(x, w, b, stride, dilation), rtol=0, atol=0)


def test_auto_dispatches_conv_to_the_cpu_path_and_mixer_to_its_reference(monkeypatch):
    """dwconv2d on ``auto`` goes through dwconv2d_cpu (``torch`` does not); the mixer runs its split / cat reference
    on both (no formulation measured faster, see the module docstring of zoo/kernels/dwconv/_cpu.py)."""
    calls = []
    monkeypatch.setattr(ops_module, "dwconv2d_cpu", lambda *a: calls.append("conv") or dwconv2d_cpu(*a))
    reference = ops_module.inception_dwconv2d_reference
    monkeypatch.setattr(ops_module, "inception_dwconv2d_reference", lambda *a: calls.append("mixer") or reference(*a))
    x, w, b = _conv_inputs((1, 4, 6, 6), 3)
    dwconv2d(x, w, b)
    dwconv2d(x, w, b, backend="torch")
    gen = torch.Generator().manual_seed(0)
    weights = (torch.randn(1, 1, 3, 3, generator=gen), None, torch.randn(1, 1, 1, 5, generator=gen), None)
    weights += (torch.randn(1, 1, 5, 1, generator=gen), None)
    inception_dwconv2d(x, *weights)
    assert calls == ["conv", "mixer"]


def test_unireplknet_deployed_block_on_channels_last_matches_torch():
    """The deployed Dilated Reparam Block (13 x 13 with bias) on a channels_last map: auto (the padded kernel) gives
    the reference output."""
    from zoo.layers.unireplknet import DilatedReparamBlock

    torch.manual_seed(0)
    blocks = {backend: DilatedReparamBlock(8, 13, deploy=True, backend=backend).eval() for backend in ("auto", "torch")}
    for p in blocks["torch"].parameters():
        torch.nn.init.normal_(p)
    blocks["auto"].load_state_dict(blocks["torch"].state_dict())
    x = torch.randn(2, 8, 14, 14).contiguous(memory_format=CL)
    with torch.no_grad():
        y, y_ref = blocks["auto"](x), blocks["torch"](x)
    assert y.is_contiguous(memory_format=CL)
    assert_relative_error(y, y_ref, 1e-6)


def test_padded_path_is_what_runs_without_grad(monkeypatch):
    """The no-grad channels_last 13 x 13 call goes through the zero-padded kernel (a spy on F.pad sees a 15 x 15
    weight); with gradients it does not."""
    seen = []
    real_pad = cpu_module.F.pad

    def spy(t, pad, *args, **kwargs):
        out = real_pad(t, pad, *args, **kwargs)
        seen.append(tuple(out.shape[-2:]))
        return out

    monkeypatch.setattr(cpu_module.F, "pad", spy)
    x, w, b = _conv_inputs((2, 4, 8, 8), 13)
    x = x.contiguous(memory_format=CL)
    with torch.no_grad():
        dwconv2d(x, w, b)
    assert seen == [(15, 15)]
    dwconv2d(x, w.requires_grad_(), b)
    assert seen == [(15, 15)]
