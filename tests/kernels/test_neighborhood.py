"""zoo::neighborhood_attention: the reference against dense attention with an explicit mask built from the formulas of
docs/semantics.md §5.1-§5.4, and the Triton kernels (interpreter on CPU) against the reference in float64, forward and
every gradient."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import zoo.kernels._backend as backend_module
from tests.helpers import DEVICE, assert_close, assert_relative_error, attention_dtype_cases
from zoo.kernels._backend import ticket_counters
from zoo.kernels.neighborhood import (
    na1d,
    na2d,
    na3d,
    na_backward,
    na_forward,
    na_reference,
    neighborhood_attention,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (spatial, heads, head_dim, kernel_size, dilation, is_causal, rpb): sizes that are not multiples of the
# interpreter's tiles, windows at the borders, dilation groups of unequal length, per-axis values.
CASES = [
    ((13,), 2, 16, 5, 2, False, True),
    ((21,), 1, 24, 7, 1, True, False),
    ((7, 9), 2, 16, 3, 1, False, True),
    ((7, 9), 1, 16, (3, 5), (2, 1), False, True),
    ((6, 9), 1, 16, 3, (1, 2), (True, False), False),
    ((3, 6, 5), 1, 16, 3, (1, 2, 1), False, True),
]


def _case_id(case) -> str:
    spatial, heads, head_dim, ks, ds, cs, rpb = case
    parts = ["x".join(map(str, spatial)), f"h{heads}d{head_dim}", f"k{ks}", f"dil{ds}"]
    parts += ["causal" + (str(cs) if isinstance(cs, tuple) else "")] if any(_axes(cs, len(spatial))) else []
    parts += ["rpb"] if rpb else []
    return "-".join(parts).replace(" ", "")


def _axes(value, dims):
    return tuple(value) if isinstance(value, tuple) else (value,) * dims


def _inputs(case, dtype, batch=2, seed=0):
    spatial, heads, head_dim, ks, ds, cs, has_rpb = case
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *spatial, heads, head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(DEVICE, dtype) for _ in range(3))
    rpb = None
    if has_rpb:  # a learned parameter: float32 whatever the activations' dtype
        rpb = torch.randn(heads, *(2 * x - 1 for x in _axes(ks, len(spatial))), generator=gen).to(DEVICE)
    return q, k, v, rpb


# ------------------------------------------------------------------------------------------------- reference


def _in_window(i: int, j: int, n: int, k: int, d: int, causal: bool) -> bool:
    """docs/semantics.md §5.1-§5.2 for one axis, written out per pair of tokens."""
    if i % d != j % d:
        return False
    group = i % d
    n_group = len(range(group, n, d))
    ci, cj = i // d, j // d
    if causal:
        return max(ci - k + 1, 0) <= cj <= ci
    start = min(max(ci - k // 2, 0), n_group - k)
    return start <= cj < start + k


def _dense_attention(q, k, v, kernel_size, dilation, is_causal, rpb, scale):
    """Softmax attention over all tokens with an explicit [N, N] neighbourhood mask and dense bias, float64."""
    B, heads, head_dim = q.shape[0], q.shape[-2], q.shape[-1]
    spatial = q.shape[1:-2]
    dims = len(spatial)
    ks, ds, cs = _axes(kernel_size, dims), _axes(dilation, dims), _axes(is_causal, dims)
    positions = list(itertools.product(*(range(n) for n in spatial)))
    N = len(positions)
    # built element by element on the CPU, then moved to q's device once
    mask = torch.zeros(N, N, dtype=torch.bool)
    bias = torch.zeros(heads, N, N, dtype=torch.float64)
    rpb = None if rpb is None else rpb.detach().cpu()
    for a, pi in enumerate(positions):
        for b, pj in enumerate(positions):
            if all(
                _in_window(i, j, n, kk, dd, c) for i, j, n, kk, dd, c in zip(pi, pj, spatial, ks, ds, cs, strict=True)
            ):
                mask[a, b] = True
                if rpb is not None:
                    index = tuple((j - i) // dd + kk - 1 for i, j, kk, dd in zip(pi, pj, ks, ds, strict=True))
                    bias[:, a, b] = rpb[(slice(None), *index)].double()
    mask, bias = mask.to(q.device), bias.to(q.device)
    qf, kf, vf = (t.double().reshape(B, N, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    logits = (qf @ kf.transpose(-1, -2)) * scale + bias
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ vf
    return out.transpose(1, 2).reshape(q.shape), mask


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_reference_equals_dense_attention_with_the_window_mask(case):
    q, k, v, rpb = _inputs(case, torch.float64, seed=1)
    _, _, head_dim, ks, ds, cs, _ = case
    expected, mask = _dense_attention(q, k, v, ks, ds, cs, rpb, head_dim**-0.5)
    if not any(_axes(cs, len(case[0]))):  # never padded: every query has prod(kernel_size) keys
        assert (mask.sum(-1) == math.prod(_axes(ks, len(case[0])))).all()
    actual = na_reference(q, k, v, ks, ds, cs, rpb)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_window_is_the_whole_axis_when_kernel_times_dilation_is_the_length():
    """k d = n: every query of a dilation group sees its whole group, so attention is dense within groups."""
    q, k, v = (torch.randn(1, 6, 1, 16, dtype=torch.float64) for _ in range(3))
    out = na1d(q, k, v, kernel_size=3, dilation=2, backend="torch")
    for g in (0, 1):
        idx = torch.arange(g, 6, 2)
        qg, kg, vg = (t[:, idx, 0] for t in (q, k, v))
        dense = torch.softmax(qg @ kg.transpose(-1, -2) / 4.0, -1) @ vg
        torch.testing.assert_close(out[:, idx, 0], dense)


# ------------------------------------------------------------------------------------------------- Triton


def _grads(fn, inputs, dy):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _attention(case, backend):
    _, _, _, ks, ds, cs, _ = case

    def fn(q, k, v, rpb):
        return neighborhood_attention(q, k, v, ks, ds, cs, rpb, backend=backend)

    return fn


GRAD_BOUNDS = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _check(y, grads, y64, grads64, dtype):
    assert_close(y, y64, dtype, scale=float(y64.abs().max()))
    for g, g64 in zip(grads, grads64, strict=True):
        assert (g is None) == (g64 is None)
        if g is not None:
            assert_relative_error(g, g64, GRAD_BOUNDS[dtype])


@pytest.mark.parametrize("case,dtype", attention_dtype_cases(CASES, DTYPES, _case_id))
def test_triton_matches_reference(case, dtype):
    inputs = _inputs(case, dtype)
    dy = torch.randn(inputs[0].shape, device=DEVICE).to(dtype)
    y, grads = _grads(_attention(case, "triton"), inputs, dy)
    y64, grads64 = _grads(_attention(case, "torch"), [None if t is None else t.double() for t in inputs], dy.double())
    assert y.dtype == dtype and y.shape == inputs[0].shape
    for g, t in zip(grads, inputs, strict=True):
        assert g is None or (g.dtype == t.dtype and g.shape == t.shape)
    _check(y, grads, y64, grads64, dtype)


def test_non_contiguous_inputs():
    """q, k, v as views of one fused qkv projection [B, H, W, 3, heads, head_dim] (the layer's layout), and a
    transposed output gradient."""
    case = ((5, 7), 2, 16, 3, 1, False, True)
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 5, 7, 3, 2, 16, generator=gen).to(DEVICE)
    q, k, v = qkv.unbind(3)
    rpb = torch.randn(2, 5, 10, generator=gen).to(DEVICE)[..., ::2]  # strided
    assert not any(t.is_contiguous() for t in (q, k, v, rpb))
    dy = torch.randn(2, 7, 5, 2, 16, generator=gen).to(DEVICE).transpose(1, 2)
    y, grads = _grads(_attention(case, "triton"), (q, k, v, rpb), dy)
    y64, grads64 = _grads(_attention(case, "torch"), [t.double() for t in (q, k, v, rpb)], dy.double())
    _check(y, grads, y64, grads64, torch.float32)
    out, lse = na_forward(q, k, v, 3, 1, False, rpb)
    direct = na_backward(dy, q, k, v, out, lse, 3, 1, False, rpb)
    _check(out, list(direct), y64, grads64, torch.float32)
    with pytest.raises(ValueError, match=r"lse must be the forward's float32 \[B, heads, N\] = \[2, 2, 35\]"):
        na_backward(dy, q, k, v, out, lse[:, :1], 3, 1, False, rpb)


@pytest.mark.parametrize("items", [1, 2])
def test_bias_gradient_over_batch_groups(monkeypatch, items):
    """A buffer budget of fewer batch items than the batch (3): each dq program sums the logit gradients of its
    group's items in place (1 item: one group of all three; 2 items: groups {0, 2} and {1}); the bias gradient's
    programs leave their ticket counters at zero for the next launch."""
    import zoo.kernels.neighborhood as na_module

    case = ((4, 6), 2, 16, 3, (1, 2), False, True)
    heads, tokens, window = 2, 4 * 6, 3 * 3
    monkeypatch.setattr(na_module, "DLOGIT_BYTES", items * heads * tokens * window * 4)
    inputs = _inputs(case, torch.float32, batch=3, seed=9)
    dy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    y, grads = _grads(_attention(case, "triton"), inputs, dy)
    y64, grads64 = _grads(_attention(case, "torch"), [t.double() for t in inputs], dy.double())
    _check(y, grads, y64, grads64, torch.float32)
    assert torch.count_nonzero(ticket_counters(inputs[0].device, heads * 5 * 5)) == 0


def test_bias_gradient_beyond_32_bit_offsets_is_refused(monkeypatch):
    """More logits per head and item than the dq kernel's 32-bit slot offsets reach: a clear error, not a wrong
    gradient (the limit lowered here to this small case's 3 x 6 x 9 logits)."""
    import zoo.kernels.neighborhood as na_module

    monkeypatch.setattr(na_module, "MAX_BIAS_LOGITS", 3 * 6 * 9)
    case = ((3, 6), 1, 16, 3, 1, False, True)
    q, k, v, rpb = _inputs(case, torch.float32, batch=1)
    out, lse = na_forward(q, k, v, 3, 1, False, rpb)
    with pytest.raises(ValueError, match="needs 64-bit offsets for its gradient.*backend='torch'"):
        na_backward(torch.ones_like(out), q, k, v, out, lse, 3, 1, False, rpb)


def test_backward_takes_an_output_gradient_of_another_dtype():
    """Called directly, the backward casts dO to the dtype of q (its dots pair dO with v)."""
    q, k, v, rpb = _inputs(((11,), 1, 16, 3, 1, False, False), torch.bfloat16, seed=8)
    out, lse = na_forward(q, k, v, 3)
    dy = torch.randn(q.shape, device=DEVICE)
    grads = na_backward(dy, q, k, v, out, lse, 3)
    expected = na_backward(dy.to(torch.bfloat16), q, k, v, out, lse, 3)
    for g, e in zip(grads[:3], expected[:3], strict=True):
        assert g.dtype == torch.bfloat16 and torch.equal(g, e)


def test_each_rank_has_its_function():
    q = torch.randn(1, 5, 6, 1, 16, device=DEVICE)
    expected = na_reference(q, q, q, 3)
    assert_close(na2d(q, q, q, 3, backend="triton"), expected, torch.float32)
    with pytest.raises(ValueError, match=r"na1d takes q, k, v laid out \[B, X0, heads, head_dim\] \(4-D\)"):
        na1d(q, q, q, 3)
    with pytest.raises(ValueError, match=r"na3d takes q, k, v laid out \[B, X0, X1, X2, heads, head_dim\]"):
        na3d(q, q, q, 3)


def test_bad_inputs_raise_clear_errors():
    q = torch.randn(1, 9, 2, 16, device=DEVICE)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=r"axis 0 has 9 tokens, kernel_size 5 x dilation 2 = 10"):
            na1d(q, q, q, 5, dilation=2, backend=backend)
        with pytest.raises(ValueError, match=r"kernel_size must be odd and >= 3 on every axis, got 4 on axis 0"):
            na1d(q, q, q, 4, backend=backend)
        with pytest.raises(ValueError, match=r"cannot be used with causal"):
            na1d(q, q, q, 3, is_causal=True, rpb=torch.zeros(2, 5, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match=r"rpb must have shape \[heads, 2 k - 1 per axis\] = \[2, 5\], got"):
            na1d(q, q, q, 3, rpb=torch.zeros(2, 3, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match=r"q, k and v must have the same shape .* k \[1, 9, 2, 8\]"):
            na1d(q, q[..., :8], q, 3, backend=backend)
        with pytest.raises(ValueError, match=r"kernel_size must be one int or 1 of them"):
            na1d(q, q, q, (3, 3), backend=backend)
        with pytest.raises(TypeError, match="q must have a floating-point dtype"):
            na1d(q.long(), q, q, 3, backend=backend)
    small = torch.randn(1, 9, 2, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r"head_dim in \[16, 128\], got 8 .* use backend='torch'"):
        na1d(small, small, small, 3, backend="triton")
    assert na1d(small, small, small, 3, backend="torch").shape == small.shape  # the reference takes any head_dim


def test_grid_limits():
    """Batch x heads rows go on the grid axis that takes 2^31 - 1 programs; the boxes on the one that takes 65535."""
    from zoo.kernels.neighborhood import _grid

    grid, tiles = _grid({"spatial": (1, 1, 64 * 1000), "dilation": (1, 1, 1)}, (1, 1, 64), 70000)
    assert grid == (70000, 1000) and tiles == (1, 1, 1000)
    with pytest.raises(ValueError, match="65536 query or key boxes, more than a grid axis takes"):
        _grid({"spatial": (1, 1, 65536), "dilation": (1, 1, 1)}, (1, 1, 1), 1)


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER", False)
    q = torch.randn(1, 9, 1, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        na1d(q, q, q, 3, backend="triton")


def test_empty_batch():
    q = torch.randn(0, 5, 5, 1, 16, device=DEVICE, requires_grad=True)
    rpb = torch.randn(1, 5, 5, device=DEVICE, requires_grad=True)
    y = na2d(q, q, q, 3, rpb=rpb, backend="triton")
    assert y.shape == q.shape
    y.sum().backward()
    assert torch.count_nonzero(rpb.grad) == 0


@pytest.mark.parametrize("with_rpb", [False, True], ids=["plain", "rpb"])
def test_opcheck(with_rpb):
    case = ((9,), 2, 16, 3, 2, False, with_rpb)
    q, k, v, rpb = _inputs(case, torch.float32, batch=1, seed=4)
    leaves = [None if t is None else t.requires_grad_() for t in (q, k, v, rpb)]
    torch.library.opcheck(torch.ops.zoo.neighborhood_attention.default, (*leaves, [3], [2], [False], 0.25))
    out, lse = na_forward(q.detach(), k.detach(), v.detach(), 3, 2, False, None if rpb is None else rpb.detach())
    dy = torch.randn_like(out)
    detached = [None if t is None else t.detach() for t in leaves]
    torch.library.opcheck(
        torch.ops.zoo.neighborhood_attention_backward.default,
        (dy, *detached[:3], out, lse, detached[3], [3], [2], [False], 0.25),
    )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_fullgraph(backend):
    case = ((5, 6), 1, 16, 3, 1, False, True)
    inputs = _inputs(case, torch.float32, seed=5)
    dy = torch.randn(inputs[0].shape, device=DEVICE)

    def fn(q, k, v, rpb):
        return na2d(q * 2.0, k, v, 3, rpb=rpb, backend=backend) + 1.0

    y, grads = _grads(torch.compile(fn, fullgraph=True), inputs, dy)
    expected, grads_eager = _grads(fn, inputs, dy)
    assert_close(y, expected, torch.float32, scale=float(expected.abs().max()))
    for g, e in zip(grads, grads_eager, strict=True):
        assert_relative_error(g, e, 1e-5)


def test_autocast_keeps_a_float32_bias():
    """Under autocast the activations are bf16 and the bias stays a float32 parameter with a float32 gradient."""
    case = ((5, 6), 1, 16, 3, 1, False, True)
    q, k, v, rpb = _inputs(case, torch.bfloat16, seed=7)
    rpb.requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y = na2d(q, k, v, 3, rpb=rpb, backend="triton")
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert rpb.grad.dtype == torch.float32


@pytest.mark.gpu
def test_gpu_bias_gradient_over_batch_groups(monkeypatch):
    """On the GPU: a buffer of one batch item for a batch of three (the dq kernel's in-place sums over its group,
    inline PTX) at a model size, and the bias gradient's chunked programs with their tickets, twice in a row (the
    counters reset themselves)."""
    import zoo.kernels.neighborhood as na_module

    case = ((56, 56), 2, 32, 7, 1, False, True)
    monkeypatch.setattr(na_module, "DLOGIT_BYTES", 2 * 56 * 56 * 49 * 4)
    inputs = _inputs(case, torch.bfloat16, batch=3, seed=11)
    dy = torch.randn(inputs[0].shape, device=DEVICE).to(torch.bfloat16)
    y64, grads64 = _grads(_attention(case, "torch"), [t.double() for t in inputs], dy.double())
    for _ in range(2):
        y, grads = _grads(_attention(case, "triton"), inputs, dy)
        _check(y, grads, y64, grads64, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "case",
    [
        ((56, 56), 2, 32, 7, 1, False, True),
        ((28, 28), 4, 32, 7, 4, False, True),
        ((4096,), 2, 64, 129, 1, True, False),
        ((8, 16, 16), 2, 32, (3, 5, 5), (1, 2, 1), False, True),
        ((14, 14), 2, 128, 7, 2, False, True),
    ],
    ids=_case_id,
)
def test_gpu_model_sizes_match_reference(case, dtype):
    inputs = _inputs(case, dtype, batch=2, seed=6)
    dy = torch.randn(inputs[0].shape, device=DEVICE).to(dtype)
    y, grads = _grads(_attention(case, "triton"), inputs, dy)
    y64, grads64 = _grads(_attention(case, "torch"), [None if t is None else t.double() for t in inputs], dy.double())
    _check(y, grads, y64, grads64, dtype)
