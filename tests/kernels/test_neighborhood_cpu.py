"""The CPU path of neighborhood attention (zoo/kernels/neighborhood_cpu.py; what ``backend="auto"`` runs on CPU
tensors): forward and every gradient against the gather reference (``backend="torch"``) and against dense attention
with a mask written per pair from docs/semantics.md §5, in both regimes (dense: one block per dilation group; blocked:
small blocks with key boxes), with dilation, causal windows, the bias, 1-, 2- and 3-D, odd sizes; the dispatch, the
cached tables, torch.compile, and the NAT layer and model on maps smaller than the window."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import zoo.kernels.neighborhood as na_module
import zoo.kernels.neighborhood_cpu as cpu_module
from zoo.kernels.neighborhood import na2d, na_reference, neighborhood_attention
from zoo.kernels.neighborhood_cpu import block_sizes, na_blocked

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

# (spatial, heads, head_dim, kernel_size, dilation, is_causal, rpb): odd sizes, borders, dilation groups of unequal
# length, per-axis values, an axis exactly one window long (k d = n).
CASES = [
    ((13,), 2, 16, 5, 2, False, True),
    ((21,), 1, 8, 7, 1, True, False),
    ((11,), 1, 8, 3, 3, True, False),
    ((7, 9), 2, 16, 3, 1, False, True),
    ((7, 9), 1, 16, (3, 5), (2, 1), False, True),
    ((6, 9), 1, 16, 3, (1, 2), (True, False), False),
    ((7, 7), 2, 8, 7, 1, False, True),
    ((6, 10), 1, 8, 3, (2, 3), False, True),
    ((3, 6, 5), 1, 16, 3, (1, 2, 1), False, True),
]


def _axes(value, dims):
    return tuple(value) if isinstance(value, tuple) else (value,) * dims


def _case_id(case) -> str:
    spatial, heads, head_dim, ks, ds, cs, rpb = case
    parts = ["x".join(map(str, spatial)), f"h{heads}d{head_dim}", f"k{ks}", f"dil{ds}"]
    parts += ["causal" + (str(cs) if isinstance(cs, tuple) else "")] if any(_axes(cs, len(spatial))) else []
    parts += ["rpb"] if rpb else []
    return "-".join(parts).replace(" ", "")


def _inputs(case, dtype=torch.float64, batch=2, seed=0):
    spatial, heads, head_dim, ks, _, _, has_rpb = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, *spatial, heads, head_dim, generator=gen).to(dtype) for _ in range(3))
    rpb = None
    if has_rpb:
        rpb = torch.randn(heads, *(2 * x - 1 for x in _axes(ks, len(spatial))), generator=gen, dtype=torch.float64)
    return q, k, v, rpb


def _grads(fn, inputs, dy):
    """Output and the gradients of (q, k, v, rpb) (None for a missing rpb) of ``fn`` for output gradient dy."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [None if t is None else t.grad for t in leaves]


def _assert_all_close(actual, expected, **tol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e, **tol)


def _per_axis(case):
    spatial, _, _, ks, ds, cs, _ = case
    dims = len(spatial)
    return _axes(ks, dims), _axes(ds, dims), _axes(cs, dims)


# ------------------------------------------------------------------------------------------- against the oracles


def _dense_with_pair_mask(q, k, v, kernel_size, dilation, is_causal, rpb, scale):
    """Softmax attention over every token with a [N, N] mask and bias written per (query, key) pair from §5.1-§5.4."""
    spatial = q.shape[1:-2]
    positions = list(itertools.product(*(range(n) for n in spatial)))
    N, heads = len(positions), q.shape[-2]
    mask = torch.zeros(N, N, dtype=torch.bool)
    bias = torch.zeros(heads, N, N, dtype=torch.float64)
    for a, pi in enumerate(positions):
        for b, pj in enumerate(positions):
            inside = True
            for i, j, n, kk, dd, c in zip(pi, pj, spatial, kernel_size, dilation, is_causal, strict=True):
                group_len = len(range(i % dd, n, dd))
                ci, cj = i // dd, j // dd
                if c:
                    lo, hi = max(ci - kk + 1, 0), ci
                else:
                    lo = min(max(ci - kk // 2, 0), group_len - kk)
                    hi = lo + kk - 1
                inside &= i % dd == j % dd and lo <= cj <= hi
            if inside:
                mask[a, b] = True
                if rpb is not None:
                    index = tuple(
                        (j - i) // dd + kk - 1 for i, j, kk, dd in zip(pi, pj, kernel_size, dilation, strict=True)
                    )
                    bias[:, a, b] = rpb[(slice(None), *index)]
    B, head_dim = q.shape[0], q.shape[-1]
    qf, kf, vf = (t.reshape(B, N, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    logits = (qf @ kf.transpose(-1, -2) * scale + bias).masked_fill(~mask, float("-inf"))
    return (logits.softmax(-1) @ vf).transpose(1, 2).reshape(q.shape)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_auto_on_cpu_matches_the_reference_forward_and_gradients(case):
    """backend='auto' on CPU tensors (the blocked path, default block sizes) against the gather reference, float64:
    the output and the gradients of q, k, v and rpb."""
    ks, ds, cs = _per_axis(case)
    inputs = _inputs(case)
    dy = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    auto = _grads(lambda q, k, v, r: neighborhood_attention(q, k, v, ks, ds, cs, r, backend="auto"), inputs, dy)
    ref = _grads(lambda q, k, v, r: na_reference(q, k, v, ks, ds, cs, r), inputs, dy)
    _assert_all_close(auto, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_block_length_matches_dense_attention_with_a_pair_mask(case):
    """Both regimes and the ones between: blocks of 1, 2 and 3 group coordinates (blocked, with padded last blocks
    and key boxes moved back at the borders) and a block longer than any axis (dense), forward and gradients, against
    dense attention with a per-pair mask and bias."""
    ks, ds, cs = _per_axis(case)
    head_dim = case[2]
    inputs = _inputs(case, seed=3)
    dy = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = _grads(lambda q, k, v, r: _dense_with_pair_mask(q, k, v, ks, ds, cs, r, head_dim**-0.5), inputs, dy)
    for t in (1, 2, 3, 64):
        blocks = (t,) * len(case[0])
        actual = _grads(lambda q, k, v, r, b=blocks: na_blocked(q, k, v, ks, ds, cs, r, head_dim**-0.5, b), inputs, dy)
        _assert_all_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_inputs_compute_in_float32(dtype):
    """Output in q's dtype, within one rounding of the float64 reference; a float32 bias keeps a float32 gradient
    (also under CPU autocast, which must not lower the attention itself)."""
    case = ((9, 8), 2, 16, 3, (1, 2), False, True)
    q, k, v, rpb = _inputs(case, dtype, seed=5)
    rpb = rpb.float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = neighborhood_attention(q, k, v, 3, (1, 2), False, rpb)
    assert y.dtype == dtype
    expected = na_reference(q.double(), k.double(), v.double(), 3, (1, 2), False, rpb.detach().double())
    tol = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(y.double(), expected.to(dtype).double(), rtol=tol, atol=tol)
    y.float().square().sum().backward()
    assert rpb.grad.dtype == torch.float32 and torch.isfinite(rpb.grad).all()


def test_non_contiguous_views_of_a_fused_projection_and_an_empty_batch():
    """q, k, v as the NAT layer passes them (views of one [B, H, W, 3, heads, head_dim] tensor) and a batch of 0."""
    gen = torch.Generator().manual_seed(6)
    qkv = torch.randn(2, 9, 10, 3, 2, 16, generator=gen, dtype=torch.float64)
    q, k, v = qkv.unbind(-3)
    rpb = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64)
    expected = na_reference(q.contiguous(), k.contiguous(), v.contiguous(), 3, 2, False, rpb)
    torch.testing.assert_close(na2d(q, k, v, 3, 2, rpb=rpb), expected, rtol=1e-10, atol=1e-10)
    empty = torch.zeros(0, 7, 7, 2, 16)
    assert na2d(empty, empty, empty, 7, rpb=torch.zeros(2, 13, 13)).shape == empty.shape


def test_tables_cached_in_inference_mode_serve_a_later_training_call(monkeypatch):
    """A model run first under torch.inference_mode, then trained in the same process: the index tables cached by
    the first call are ordinary tensors, which the training call's backward can save."""
    monkeypatch.setattr(cpu_module, "_PLANS", {})
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 9, 11, 2, 16, generator=gen) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=gen)
    with torch.inference_mode():
        first = na2d(q, k, v, 3, 2, rpb=rpb)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    out = na2d(*leaves[:3], 3, 2, rpb=leaves[3])
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), first)
    assert all(t.grad is not None for t in leaves)


# ------------------------------------------------------------------------------------------------- the dispatch


def _spy(monkeypatch, name):
    calls = []
    real = getattr(na_module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(na_module, name, spy)
    return calls


def test_auto_takes_the_cpu_path_and_torch_stays_the_reference(monkeypatch):
    """backend='auto' on a CPU tensor runs na_blocked; backend='torch', ZOO_BACKEND=torch and attention dropout run
    the reference."""
    q = torch.randn(1, 8, 8, 2, 16)
    blocked, reference = _spy(monkeypatch, "na_blocked"), _spy(monkeypatch, "na_reference")
    monkeypatch.delenv("ZOO_BACKEND", raising=False)
    na2d(q, q, q, 3)
    assert (blocked, reference) == (["na_blocked"], [])
    na2d(q, q, q, 3, backend="torch")
    assert (blocked, reference) == (["na_blocked"], ["na_reference"])
    na2d(q, q, q, 3, dropout_p=0.1)
    assert reference == ["na_reference"] * 2
    monkeypatch.setenv("ZOO_BACKEND", "torch")
    na2d(q, q, q, 3)
    assert (blocked, reference) == (["na_blocked"], ["na_reference"] * 3)


def test_bad_inputs_raise_the_reference_errors():
    q = torch.randn(1, 9, 2, 16)
    with pytest.raises(ValueError, match="kernel_size \\* dilation must be <= the axis length"):
        neighborhood_attention(q, q, q, 5, dilation=2)
    with pytest.raises(ValueError, match="cannot be used with causal"):
        neighborhood_attention(q, q, q, 3, is_causal=True, rpb=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="rpb must have shape"):
        neighborhood_attention(q, q, q, 3, rpb=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="blocks must be one int >= 1 per spatial axis"):
        na_blocked(q, q, q, (3,), (1,), (False,), None, 0.25, blocks=(0,))


# ------------------------------------------------------------------------------------------------- the tables


def test_block_sizes_switch_from_dense_to_blocked():
    """Dense (one block per dilation group) up to DENSE_LIMIT windows per group, blocks of max(BLOCK_MIN, k + 1)
    beyond: NAT's 224 px levels 7, 14, 21 dense, 28 and 56 blocked; DiNAT's 56 px level at dilation 8 dense."""
    limit = int(cpu_module.DENSE_LIMIT * 7)
    assert block_sizes((7, 14), (7, 7), (1, 1)) == (7, 14)
    assert block_sizes((limit, limit + 1), (7, 7), (1, 1)) == (limit, max(cpu_module.BLOCK_MIN, 8))
    assert block_sizes((56, 56), (7, 7), (8, 8)) == (7, 7)
    assert block_sizes((4096,), (129,), (1,)) == (130,)


def test_dense_regime_has_no_gather_and_no_mask():
    """A map one window wide (nat_m's padded 7 x 7 maps): the queries, keys and output are the map itself and every
    pair is in the window: plain dense attention (with the bias only)."""
    plan = cpu_module._plan((7, 7), (7, 7), (1, 1), (False, False), (7, 7), "cpu")
    assert (plan.blocks, plan.queries, plan.keys) == (1, 49, 49)
    assert plan.q_index is None and plan.kv_index is None and plan.inverse is None and plan.mask is None


def test_blocked_regime_never_holds_a_copy_per_window_slot():
    """56 x 56 at k = 7: the gathered keys (and values) are about (8 + 6)^2 / 8^2 = 3 copies of the map, not the
    reference's 49 (one per window slot); the tables are cached, not rebuilt per call."""
    args = ((56, 56), (7, 7), (1, 1), (False, False), block_sizes((56, 56), (7, 7), (1, 1)), "cpu")
    plan = cpu_module._plan(*args)
    tokens = 56 * 56
    assert plan.kv_index.numel() <= 3.2 * tokens
    assert plan.blocks * plan.queries == tokens and plan.inverse is not None
    assert cpu_module._plan(*args) is plan


def test_every_token_is_one_query_row():
    """The inverse permutation picks each token's own row: gathering the block queries and scattering them back
    returns the map, for padded blocks and dilation groups of unequal length; every query row (padding rows copy a
    real query) holds its k0 x k1 window keys once."""
    x = torch.arange(2 * 11 * 7, dtype=torch.float64).reshape(2, 11, 7, 1, 1).expand(2, 11, 7, 1, 16).contiguous()
    ks, ds, cs = (3, 3), (3, 2), (False, False)
    for blocks in ((1, 1), (2, 3), (4, 2)):
        plan = cpu_module._plan((11, 7), ks, ds, cs, blocks, "cpu")
        rows = x.reshape(2, 77, 16).index_select(1, plan.q_index)
        torch.testing.assert_close(rows.index_select(1, plan.inverse), x.reshape(2, 77, 16))
        if plan.mask is None:  # blocks of one query: the key box is the window
            assert blocks == (1, 1) and plan.keys == math.prod(ks)
        else:
            assert plan.mask.shape == (plan.blocks, plan.queries, plan.keys)
            assert (plan.mask.sum(-1) == math.prod(ks)).all()


# -------------------------------------------------------------------------------------------- compile, layers


def test_torch_compile_fullgraph_matches_eager_over_two_shapes():
    """The auto path under torch.compile(fullgraph=True): the cached tables are constants of the graph, a second
    map shape (dynamic shapes) recompiles; output and gradients as eager."""
    rpb = torch.randn(1, 5, 5, requires_grad=True)

    def fn(q, k, v, rpb):
        return na2d(q * 2.0, k, v, 3, dilation=(1, 2), rpb=rpb) + 1.0

    compiled = torch.compile(fn, fullgraph=True)
    for shape in ((2, 7, 8, 1, 16), (1, 9, 10, 1, 16)):
        inputs = [torch.randn(shape) for _ in range(3)] + [rpb.detach()]
        dy = torch.randn(shape)
        _assert_all_close(_grads(compiled, inputs, dy), _grads(fn, inputs, dy), rtol=1e-5, atol=1e-5)


def test_nat_layer_and_model_take_the_cpu_path_on_maps_smaller_than_the_window(monkeypatch):
    """NeighborhoodAttention2D on a 3 x 5 map (zero-padded to 7 x 7) and nat_m on 8 px images: backend='auto'
    (the CPU path) against backend='torch' (the reference), outputs and gradients."""
    from zoo.layers.neighborhood import NeighborhoodAttention2D
    from zoo.models import create_model

    blocked = _spy(monkeypatch, "na_blocked")
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(32, 2, 7).double()
    x = torch.randn(2, 3, 5, 32, dtype=torch.float64)
    results = []
    for backend in ("auto", "torch"):
        layer.backend = backend
        xi = x.clone().requires_grad_(True)
        layer.zero_grad()
        layer(xi).square().sum().backward()
        results.append([xi.grad] + [p.grad.clone() for p in layer.parameters()])
    _assert_all_close(results[0], results[1], rtol=1e-9, atol=1e-9)
    assert blocked == ["na_blocked"]

    torch.manual_seed(0)
    auto = create_model("nat_m", num_classes=10, in_chans=1).double()
    torch.manual_seed(0)
    reference = create_model("nat_m", num_classes=10, in_chans=1, backend="torch").double()
    images = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    calls = len(blocked)
    torch.testing.assert_close(auto(images), reference(images), rtol=1e-9, atol=1e-9)
    assert len(blocked) - calls == sum(isinstance(m, NeighborhoodAttention2D) for m in auto.modules()) == 18
