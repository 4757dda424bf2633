"""The restructured fused neighborhood kernels (zoo/kernels/neighborhood.py) against the gather reference, forward
and every gradient, on the variants their compile-time choices make: two heads per forward program (even head
counts) and one (odd), head_dim below its power of two (masked head columns), windows whose reach needs several
key or query boxes, odd maps, dilation, causal axes, a bias, 1-D, 2-D and 3-D; and the padded bias table and the
launch configuration on their own."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import DEVICE, assert_close, assert_relative_error, attention_dtype_cases
from zoo.kernels._backend import INTERPRETER
from zoo.kernels.neighborhood import (
    _bias_table,
    _boxes,
    _cover,
    _launch_config,
    _na_bwd_kv_kernel,
    _na_bwd_q_kernel,
    _na_fwd_kernel,
    _problem,
    bias_extent,
    na_backward,
    na_forward,
    neighborhood_attention,
)

# (spatial, heads, head_dim, kernel_size, dilation, is_causal, rpb)
CASES = [
    ((17,), 4, 16, 13, 1, False, True),  # 1-D, window beyond the interpreter's 16-key cap: several key boxes
    ((10,), 3, 24, 5, 2, False, True),  # odd heads (one per program), head_dim 24 (masked to 32), dilation
    ((7, 5), 2, 16, (5, 3), (1, 1), False, True),  # odd 2-D map, per-axis kernel, two heads per program
    ((9, 10), 2, 16, 3, (2, 3), False, False),  # dilation on both axes, groups of unequal length
    ((6, 7), 1, 16, (3, 5), 1, (True, False), False),  # one causal axis
    ((3, 5, 6), 2, 16, 3, (1, 1, 2), False, True),  # 3-D with a bias
    ((4, 4, 5), 1, 16, 3, 1, (False, True, True), False),  # 3-D, causal on two axes
]


def _axes(value, dims):
    return tuple(value) if isinstance(value, tuple) else (value,) * dims


def _case_id(case) -> str:
    spatial, heads, head_dim, ks, ds, cs, rpb = case
    parts = ["x".join(map(str, spatial)), f"h{heads}d{head_dim}", f"k{ks}", f"dil{ds}", f"causal{cs}"]
    return "-".join(parts + (["rpb"] if rpb else [])).replace(" ", "")


def _inputs(case, dtype, batch=2, seed=0):
    spatial, heads, head_dim, ks, _, _, has_rpb = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, *spatial, heads, head_dim, generator=gen).to(DEVICE, dtype) for _ in range(3))
    rpb = None
    if has_rpb:
        rpb = torch.randn(heads, *(2 * x - 1 for x in _axes(ks, len(spatial))), generator=gen).to(DEVICE)
    return q, k, v, rpb


def _grads(fn, inputs, dy):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("case,dtype", attention_dtype_cases(CASES, [torch.float32, torch.bfloat16], _case_id))
def test_fused_kernels_match_reference(case, dtype):
    _, _, _, ks, ds, cs, _ = case
    inputs = _inputs(case, dtype)
    dy = torch.randn(inputs[0].shape, device=DEVICE).to(dtype)

    def run(backend):
        return lambda q, k, v, rpb: neighborhood_attention(q, k, v, ks, ds, cs, rpb, backend=backend)

    y, grads = _grads(run("triton"), inputs, dy)
    y64, grads64 = _grads(run("torch"), [None if t is None else t.double() for t in inputs], dy.double())
    assert y.dtype == dtype
    assert_close(y, y64, dtype, scale=float(y64.abs().max()))
    bound = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    for g, g64, t in zip(grads, grads64, inputs, strict=True):
        assert (g is None) == (t is None)
        if g is not None:
            assert g.dtype == t.dtype and g.shape == t.shape
            assert_relative_error(g, g64, bound)


def test_two_heads_per_program_equal_one_head_at_a_time():
    """An even head count runs two heads per forward program; each head alone (one per program) gives the same
    output and log-sum-exp."""
    case = ((5, 6), 2, 16, 3, 1, False, True)
    dtype = torch.float32 if INTERPRETER else torch.bfloat16  # compiled float32 never pairs heads
    q, k, v, rpb = _inputs(case, dtype, seed=3)
    problem = _problem(q, (3, 3), (1, 1), (False, False))
    assert _launch_config(problem, 2, True, _na_fwd_kernel)["HPP"] == 2
    assert _launch_config(problem, 1, True, _na_fwd_kernel)["HPP"] == 1
    out, lse = na_forward(q, k, v, 3, 1, False, rpb)
    # bf16 (GPU): the pair's tiles may add in another order; an output differs by at most a rounding
    out_tol, lse_tol = (1e-6, 1e-6) if dtype == torch.float32 else (1e-2, 1e-5)
    for h in range(2):
        one = [t[..., h : h + 1, :].contiguous() for t in (q, k, v)]
        out_h, lse_h = na_forward(*one, 3, 1, False, rpb[h : h + 1])
        torch.testing.assert_close(out_h[..., 0, :], out[..., h, :], rtol=out_tol, atol=out_tol)
        torch.testing.assert_close(lse_h[:, 0], lse[:, h], rtol=lse_tol, atol=lse_tol)


def test_backward_with_a_transposed_output_gradient_and_odd_heads():
    """na_backward directly, three heads, a non-contiguous output gradient, against autograd of the reference."""
    case = ((7,), 3, 16, 5, 1, False, True)
    q, k, v, rpb = _inputs(case, torch.float32, batch=2, seed=8)
    dy = torch.randn(2, 3, 7, 16, device=DEVICE).transpose(1, 2)
    out, lse = na_forward(q, k, v, 5, 1, False, rpb)
    dq, dk, dv, drpb = na_backward(dy, q, k, v, out, lse, 5, 1, False, rpb)

    def reference(q, k, v, rpb):
        return neighborhood_attention(q, k, v, 5, 1, False, rpb, backend="torch")

    _, expected = _grads(reference, [t.double() for t in (q, k, v, rpb)], dy.double())
    for g, e in zip((dq, dk, dv, drpb), expected, strict=True):
        assert_relative_error(g, e, 1e-5)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_bias_table_places_every_offset(dims):
    """The padded table holds rpb * log2 e with the offset 0 at the centre of each used axis, zeros around it,
    and is large enough for every key-minus-query offset of the walked boxes (R = TQ + TK + K per axis)."""
    ks = (3, 5, 3)[:dims]
    rpb = torch.randn(2, *(2 * x - 1 for x in ks))
    q = torch.empty(1, *(12,) * dims, 2, 16)
    problem = _problem(q, ks, (1,) * dims, (False,) * dims)
    for kernel in (_na_fwd_kernel, _na_bwd_kv_kernel, _na_bwd_q_kernel):
        config = _launch_config(problem, 2, True, kernel)
        table = _bias_table(rpb, q, config)
        extents = [bias_extent(config[f"TQ{a}"], config[f"K{a}"], config[f"TK{a}"]) for a in range(3)]
        assert table.shape == (2, *extents) and table.dtype == torch.float32 and table.is_contiguous()
        start = [(e - 1) // 2 - (k - 1) for e, k in zip(extents, problem["kernel"], strict=True)]
        inner = table[(slice(None), *(slice(s, s + 2 * k - 1) for s, k in zip(start, problem["kernel"], strict=True)))]
        torch.testing.assert_close(inner.reshape(rpb.shape), rpb * 1.4426950408889634)
        assert float(table.abs().sum()) == pytest.approx(float(inner.abs().sum()), rel=1e-6)
        for a in range(3):
            if problem["kernel"][a] > 1:
                reach = config[f"TQ{a}"] + config[f"TK{a}"] + problem["kernel"][a]
                assert extents[a] == 2 * reach + 1


def test_cover_and_boxes():
    """The walked boxes cover the reach of the own box's windows up to the cap (halving the leading used axis
    first); the dk/dv kernel owns the key box."""
    assert _cover((1, 8, 8), (1, 7, 7), 256) == (1, 16, 16)
    assert _cover((1, 8, 8), (1, 7, 7), 64) == (1, 4, 16)
    assert _cover((1, 1, 64), (1, 1, 2049), 128) == (1, 1, 128)
    assert _cover((4, 4, 4), (3, 3, 3), 64) == (1, 8, 8)
    q = torch.empty(1, 9, 9, 2, 16)
    problem = _problem(q, (3, 3), (1, 1), (False, False))
    for kernel in (_na_fwd_kernel, _na_bwd_kv_kernel, _na_bwd_q_kernel):
        config = _launch_config(problem, 2, False, kernel)
        own, walked = _boxes(config, kernel)
        assert math.prod(walked) <= (16 if INTERPRETER else 64) and all(w >= 1 for w in walked)
        tq = tuple(config[f"TQ{a}"] for a in range(3))
        assert tq == (walked if kernel is _na_bwd_kv_kernel else own)
