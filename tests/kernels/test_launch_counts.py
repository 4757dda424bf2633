"""Launches per call of every Triton op (issue 21): the forward one launch, the backward at most two (the FFT
convolution: at most three each way besides its torch.fft calls).

A launch is a Triton kernel call or an ATen op that does real work: views, allocations without a fill and
metadata ops are free. The counter is a ``TorchDispatchMode`` (it sees the ATen ops below autograd) plus a
wrapper around the Triton kernels' ``run`` (the interpreter's ``InterpretedFunction`` on CPU, ``JITFunction`` on
a GPU); ATen ops issued while a Triton call runs (the interpreter's copies) belong to that launch. Gradients are
taken with ``torch.autograd.grad`` (no AccumulateGrad ``add_``), after one warm-up call (cached tables).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

import zoo.kernels.fftconv as fftconv_module
from tests.helpers import DEVICE
from zoo.kernels._backend import INTERPRETER, FastLaunch
from zoo.kernels.batch_norm_add import batch_norm_add
from zoo.kernels.batch_norm_se import batch_norm_se
from zoo.kernels.dwconv import dwconv2d, inception_dwconv2d
from zoo.kernels.fftconv import fftconv
from zoo.kernels.gelu_grn import gelu_grn
from zoo.kernels.neighborhood import neighborhood_attention
from zoo.kernels.norm_rational import layer_norm_group_rational
from zoo.kernels.rational import group_rational
from zoo.kernels.ssm import s4d_kernel

# Allocations without a fill and metadata: free. Views are recognised from the schema (``is_view``).
FREE_OPS = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "detach",
    "lift_fresh",
    "alias",
    "is_same_size",
    "set_",
    "promote_types",  # a dtype from two dtypes
}


def _is_free(func) -> bool:
    if func.overloadpacket.__name__ in FREE_OPS or func.is_view:
        return True
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


@dataclasses.dataclass
class Counts:
    """What one call launched: Triton kernels (by name), FFT ops and the other ATen ops that do work."""

    triton: list[str] = dataclasses.field(default_factory=list)
    fft: list[str] = dataclasses.field(default_factory=list)
    aten: list[str] = dataclasses.field(default_factory=list)

    @property
    def launches(self) -> int:
        """Triton kernels plus working ATen ops, the FFTs excluded."""
        return len(self.triton) + len(self.aten)


class _Counter(TorchDispatchMode):
    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts
        self.inside_triton = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside_triton and not _is_free(func):
            name = func.overloadpacket.__name__
            (self.counts.fft if "fft" in name else self.counts.aten).append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def count(monkeypatch):
    """``with count() as counts:`` records the launches of the body into ``counts``."""
    if INTERPRETER:
        from triton.runtime.interpreter import InterpretedFunction as kernel_class
    else:
        kernel_class = triton.runtime.jit.JITFunction
    original = kernel_class.run
    active: list[_Counter] = []

    def run(self, *args, **kwargs):
        if not active or kwargs.get("warmup"):
            return original(self, *args, **kwargs)
        active[-1].counts.triton.append(self.__name__)
        active[-1].inside_triton += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            active[-1].inside_triton -= 1

    monkeypatch.setattr(kernel_class, "run", run)
    # on a GPU, FastLaunch calls a compiled kernel's launcher directly after its first launch: send every launch
    # through JITFunction.run, where it is counted
    monkeypatch.setattr(FastLaunch, "launch", lambda self, grid, *a, **k: self.fn.run(*a, grid=grid, warmup=False, **k))

    @contextlib.contextmanager
    def counting():
        counter = _Counter(Counts())
        active.append(counter)
        try:
            with counter:
                yield counter.counts
        finally:
            active.pop()

    return counting


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(DEVICE).requires_grad_(True) for t in tensors]


def _measure(count, call, leaves) -> tuple[Counts, Counts]:
    """(forward, backward) counts of ``call(leaves)`` after one warm-up call and backward."""
    y = call(leaves)
    dy = torch.randn_like(y)
    torch.autograd.grad(y, leaves, dy)
    with count() as forward:
        y = call(leaves)
    with count() as backward:
        grads = torch.autograd.grad(y, leaves, dy)
    assert all(g is not None and g.shape == t.shape for g, t in zip(grads, leaves, strict=True))
    return forward, backward


def _describe(counts: Counts) -> str:
    return f"triton {counts.triton}, aten {counts.aten}, fft {counts.fft}"


def _s4d_params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    log_dt = torch.rand(3, generator=gen) * 4.6 - 6.9
    log_A_real = torch.rand(3, 6, generator=gen) - 1.0
    A_imag = 3.14159 * torch.arange(6.0).expand(3, 6) + torch.randn(3, 6, generator=gen)
    return _leaves(log_dt, torch.randn(3, 6, 2, generator=gen), log_A_real, A_imag.contiguous())


# name -> (leaves, call); every op here: forward 1 launch, backward at most 2.
SMALL_OPS = {
    "group_rational": (
        lambda: _leaves(torch.randn(2, 16), 0.5 * torch.randn(1, 6), 0.5 * torch.randn(2, 4)),
        lambda t: group_rational(*t, backend="triton"),
    ),
    "layer_norm_group_rational": (
        lambda: _leaves(
            torch.randn(3, 16), torch.randn(16), torch.randn(16), 0.5 * torch.randn(1, 6), torch.randn(2, 4)
        ),
        lambda t: layer_norm_group_rational(*t, out_dtype=torch.bfloat16, backend="triton"),
    ),
    "dwconv2d_channels_last": (
        lambda: _leaves(
            torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last), torch.randn(8, 1, 3, 3), torch.randn(8)
        ),
        lambda t: dwconv2d(*t, backend="triton"),
    ),
    "dwconv2d_nchw": (
        lambda: _leaves(torch.randn(2, 8, 9, 9), torch.randn(8, 1, 3, 3), torch.randn(8)),
        lambda t: dwconv2d(*t, backend="triton"),
    ),
    # the other kernel families: the implicit GEMM (13 x 13), the generic kernel (stride 2; it reads the weight
    # in place, no transposed table), the direct kernel dilated
    "dwconv2d_igemm": (
        lambda: _leaves(
            torch.randn(1, 8, 14, 14).to(memory_format=torch.channels_last), torch.randn(8, 1, 13, 13), torch.randn(8)
        ),
        lambda t: dwconv2d(*t, backend="triton"),
    ),
    "dwconv2d_generic_stride_2": (
        lambda: _leaves(
            torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last), torch.randn(8, 1, 3, 3), torch.randn(8)
        ),
        lambda t: dwconv2d(*t, stride=2, backend="triton"),
    ),
    "dwconv2d_dilated": (
        lambda: _leaves(torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last), torch.randn(8, 1, 3, 3)),
        lambda t: dwconv2d(*t, dilation=2, backend="triton"),
    ),
    "inception_dwconv2d": (
        lambda: _leaves(
            torch.randn(1, 8, 6, 6),
            torch.randn(2, 1, 3, 3),
            torch.randn(2),
            torch.randn(2, 1, 1, 5),
            torch.randn(2),
            torch.randn(2, 1, 5, 1),
            torch.randn(2),
        ),
        lambda t: inception_dwconv2d(*t, backend="triton"),
    ),
    "s4d_kernel_zoh": (_s4d_params, lambda t: s4d_kernel(*t, L=21, method="zoh", backend="triton")),
    "s4d_kernel_bilinear": (_s4d_params, lambda t: s4d_kernel(*t, L=21, method="bilinear", backend="triton")),
    "neighborhood_attention_1d_causal": (
        lambda: _leaves(*(torch.randn(2, 11, 2, 16) for _ in range(3))),
        lambda t: neighborhood_attention(*t, kernel_size=5, is_causal=True, backend="triton"),
    ),
    "neighborhood_attention_2d_dilated": (
        lambda: _leaves(*(torch.randn(1, 6, 7, 1, 16) for _ in range(3))),
        lambda t: neighborhood_attention(*t, kernel_size=3, dilation=2, backend="triton"),
    ),
    # with a bias: its gradient is summed over the batch and per offset by the dk/dv launch's extra programs (the
    # smallest maps the windows fit: the interpreter runs a program per (head, offset, chunk))
    "neighborhood_attention_2d_bias": (
        lambda: _leaves(*(torch.randn(2, 6, 5, 1, 16) for _ in range(3)), torch.randn(1, 5, 9)),
        lambda t: neighborhood_attention(*t[:3], kernel_size=(3, 5), dilation=(2, 1), rpb=t[3], backend="triton"),
    ),
    "neighborhood_attention_3d_bias": (
        lambda: _leaves(*(torch.randn(1, 3, 3, 3, 1, 16) for _ in range(3)), torch.randn(1, 5, 5, 5)),
        lambda t: neighborhood_attention(*t[:3], kernel_size=3, rpb=t[3], backend="triton"),
    ),
}


@pytest.mark.parametrize("name", list(SMALL_OPS))
def test_one_forward_launch_and_at_most_two_backward(name, count):
    make, call = SMALL_OPS[name]
    forward, backward = _measure(count, call, make())
    assert forward.launches == 1 and not forward.fft, _describe(forward)
    assert backward.launches <= 2 and not backward.fft, _describe(backward)
    assert backward.triton, _describe(backward)  # the work runs in Triton, not in ATen ops


def test_group_rational_backward_is_one_launch(count):
    """The backward kernel's last program adds the coefficient gradients' partial sums (no second kernel)."""
    make, call = SMALL_OPS["group_rational"]
    forward, backward = _measure(count, call, make())
    assert forward.launches == 1 and backward.launches == 1, f"{_describe(forward)}; {_describe(backward)}"


def test_gelu_grn_launches_two_kernels_each_way(count):
    """GELU + GRN: two launches each way (the issue's bound of one forward launch does not hold here: each output
    needs its sample's mean over every channel of norms over the whole map, a dependency across the grid's
    programs, which a second launch resolves; the modules run 11 ATen ops forward and 22 backward, counted the
    same way on the CPU)."""
    gen = torch.Generator().manual_seed(2)
    leaves = _leaves(torch.randn(2, 5, 7, 40, generator=gen), torch.randn(40, generator=gen), torch.randn(40))
    forward, backward = _measure(count, lambda t: gelu_grn(*t, backend="triton"), leaves)
    report = f"forward: {_describe(forward)}; backward: {_describe(backward)}"
    assert len(forward.triton) == 2 and not forward.aten and not forward.fft, report
    assert len(backward.triton) == 2 and not backward.aten and not backward.fft, report


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_add_launches_two_kernels_each_way(training, count):
    """Batch norm + scale + residual add: two launches each way in training (one forward in eval), no ATen op, the
    running statistics' step inside the first kernel (the batch's statistics span every sample: a dependency
    across the grid's programs, which the second launch resolves; the modules run BN, the scale's product and the
    add, and twice as many ops backward). The residual's gradient is the output's gradient itself."""
    gen = torch.Generator().manual_seed(3)
    running = [torch.zeros(40, device=DEVICE), torch.ones(40, device=DEVICE)]
    leaves = _leaves(
        torch.randn(3, 40, 5, 7, generator=gen),
        torch.randn(3, 40, 5, 7, generator=gen),
        torch.rand(40, generator=gen),
        torch.randn(40, generator=gen),
        torch.rand(40, generator=gen),
    )

    def call(t):
        y, x, w, b, s = t
        return batch_norm_add(y, x, *running, w, b, training, 0.1, 1e-5, s, backend="triton")

    forward, backward = _measure(count, call, leaves)
    report = f"forward: {_describe(forward)}; backward: {_describe(backward)}"
    assert len(forward.triton) == (2 if training else 1) and not forward.aten and not forward.fft, report
    assert len(backward.triton) == 2 and not backward.aten and not backward.fft, report


# the SE block's layers between the map kernels: forward, and backward (then the batch norm's d weight / d bias kernel)
BATCH_NORM_SE_FORWARD_ATEN = ["addmm", "relu_", "addmm"]
BATCH_NORM_SE_BACKWARD_ATEN = ["mm", "mm", "threshold_backward", "mm", "sum", "mm"]


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_se_launches_two_kernels_forward_three_backward_around_the_se_layers(training, count):
    """Batch norm + squeeze-and-excitation: two Triton launches forward, three backward, and between them the SE
    block's layers as the ATen ops they are (the bound of one forward launch does not hold: the gate needs every
    channel's pool, a matrix product across the channel blocks; forward two [N, C] x [C, R] products and the ReLU,
    backward four products, the ReLU's gradient and the hidden bias's sum; the third backward kernel sums the pool's
    gradient into the batch norm's d weight and d bias). The modules make BN's launches, the pool, the SE layers,
    the sigmoid and the product, and about twice as many ops backward."""
    gen = torch.Generator().manual_seed(4)
    running = [torch.zeros(40, device=DEVICE), torch.ones(40, device=DEVICE)]
    leaves = _leaves(
        torch.randn(3, 40, 5, 7, generator=gen),
        torch.rand(40, generator=gen),
        torch.randn(40, generator=gen),
        torch.randn(10, 40, generator=gen),
        torch.randn(10, generator=gen),
        torch.randn(40, 10, generator=gen),
        torch.randn(40, generator=gen),
    )

    def call(t):
        y, w, b, dw, db, uw, ub = t
        return batch_norm_se(y, *running, w, b, training, 0.1, 1e-5, dw, db, uw, ub, backend="triton")

    forward, backward = _measure(count, call, leaves)
    report = f"forward: {_describe(forward)}; backward: {_describe(backward)}"
    names = [name.split(".")[1] for name in forward.aten]  # "aten.addmm.default" -> "addmm"
    assert len(forward.triton) == 2 and names == BATCH_NORM_SE_FORWARD_ATEN and not forward.fft, report
    names = [name.split(".")[1] for name in backward.aten]
    kernels = ["_bn_se_grad_sums_kernel", "_bn_se_norm_grads_kernel", "_bn_se_grad_apply_kernel"]
    assert backward.triton == kernels, report
    assert names == BATCH_NORM_SE_BACKWARD_ATEN and not backward.fft, report


# (bidirectional, D / gates / GELU on)
FFTCONV_CASES = [(False, True), (True, True), (False, False), (True, False)]


@pytest.mark.parametrize("path", ["fft", "direct"])
@pytest.mark.parametrize(
    "bidirectional, extras", FFTCONV_CASES, ids=lambda v: {True: "on", False: "off"}.get(v, str(v))
)
def test_fftconv_launches(path, bidirectional, extras, count, monkeypatch):
    """FFT path: at most 3 launches each way besides one rFFT and one inverse FFT each way; direct path: one
    kernel forward, two backward, no FFT."""
    monkeypatch.setattr(fftconv_module, "DIRECT_MAX_TAPS", 0 if path == "fft" else 1 << 30)
    B, H, L, k_len = 2, 3, 20, 9
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(B, H, L, generator=gen), torch.randn((2, H, k_len) if bidirectional else (H, k_len))]
    if extras:
        tensors += [torch.randn(H, generator=gen), torch.randn(B, H, L, generator=gen), torch.randn(B, H, L)]
    leaves = _leaves(*tensors)

    def call(t):
        if not extras:
            return fftconv(t[0], t[1], bidirectional=bidirectional, backend="triton")
        return fftconv(
            t[0], t[1], t[2], bidirectional=bidirectional, activation="gelu", gate_in=t[3], gate_out=t[4],
            backend="triton",
        )  # fmt: skip

    forward, backward = _measure(count, call, leaves)
    report = f"forward: {_describe(forward)}; backward: {_describe(backward)}"
    if path == "fft":
        assert forward.launches <= 3 and backward.launches <= 3, report
        assert len(forward.fft) == 2 and len(backward.fft) == 2, report  # one rFFT and one inverse each way
        assert len(forward.triton) == 2 and len(backward.triton) == 3, report
    else:
        assert forward.launches == 1 and backward.launches <= 2, report
        assert not forward.fft and not backward.fft, report


def test_neighborhood_forward_with_a_bias_is_one_launch(count):
    """The padded, pre-scaled bias table is cached per version of rpb: an inference call with an unchanged bias
    launches the forward kernel alone; an in-place update of rpb (an optimiser step) rebuilds it once."""
    q, k, v = (torch.randn(1, 7, 9, 2, 16, device=DEVICE) for _ in range(3))
    rpb = torch.randn(2, 5, 5, device=DEVICE)

    def call():
        return neighborhood_attention(q, k, v, kernel_size=3, rpb=rpb, backend="triton")

    first = call()
    with count() as again:
        second = call()
    assert again.launches == 1 and again.triton, _describe(again)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    with torch.no_grad():
        rpb.mul_(2.0)
    with count() as updated:
        changed = call()
    assert updated.launches > 1, _describe(updated)  # the table is rebuilt from the new values
    expected = neighborhood_attention(q, k, v, kernel_size=3, rpb=rpb, backend="torch")
    torch.testing.assert_close(changed, expected, rtol=2e-5, atol=2e-5)
    with torch.inference_mode():  # inference tensors have no version counter: the table is built per call
        inference_rpb = rpb.clone()
        out = neighborhood_attention(q, k, v, kernel_size=3, rpb=inference_rpb, backend="triton")
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)
