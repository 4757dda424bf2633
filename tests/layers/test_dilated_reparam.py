"""The Dilated Reparam Block's merged forms (zoo/layers/dilated_reparam.py) against its branches: output, every
gradient and the running statistics, in training (batch statistics) and eval (running ones)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import DEVICE, assert_relative_error
from zoo.layers import DILATED_BRANCHES, DilatedReparamBlock
from zoo.layers.dilated_reparam import branch_tap_positions
from zoo.layers.unireplknet import dilate_kernel
from zoo.models import create_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@torch.no_grad()
def _randomise(block: DilatedReparamBlock, seed: int = 0) -> DilatedReparamBlock:
    """Random weights, affine terms and running statistics; every parameter of every branch distinct."""
    generator = torch.Generator().manual_seed(seed)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(0.5 + torch.rand(c, generator=generator))
            module.bias.copy_(torch.randn(c, generator=generator))
            if module.running_mean is not None:
                module.running_mean.copy_(torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
        elif isinstance(module, torch.nn.Conv2d):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
    return block


def _input(shape, dtype=torch.float64, seed: int = 1, channels_last: bool = False) -> torch.Tensor:
    """An input whose channels have means of about their spread (the batch statistics are not centred)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    x = x + torch.randn(1, shape[1], 1, 1, generator=generator, dtype=torch.float64)
    x = x.to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _run(block: DilatedReparamBlock, x: torch.Tensor, grad: torch.Tensor, branches: bool):
    """Output, input gradient and every parameter's gradient (by name) for the output gradient ``grad``."""
    x = x.detach().clone().requires_grad_()
    out = block.forward_branches(x) if branches else block(x)
    params = dict(block.named_parameters())
    grads = torch.autograd.grad(out, [x, *params.values()], grad)
    return out, dict(zip(["x", *params], grads, strict=True))


def _buffers(block: DilatedReparamBlock) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in block.named_buffers()}


def _compare(block, x, bound, reference_block=None, reference_x=None):
    """The merged block (``block``) against the branches of ``reference_block`` (default: a copy of ``block``) on
    ``reference_x`` (default ``x``): output, gradients and buffers within ``bound`` (relative, per tensor)."""
    reference_block = copy.deepcopy(block) if reference_block is None else reference_block
    reference_x = x if reference_x is None else reference_x
    grad = _input(x.shape, seed=2).to(x.device, x.dtype)
    out, grads = _run(block, x, grad, branches=False)
    expected, expected_grads = _run(reference_block, reference_x, grad.to(reference_x.dtype), branches=True)
    assert out.dtype == x.dtype and out.is_contiguous(memory_format=torch.channels_last) == (
        x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    )
    assert_relative_error(out, expected, bound)
    assert grads.keys() == expected_grads.keys()
    dtypes = {"x": x.dtype} | {name: p.dtype for name, p in block.named_parameters()}
    for name, value in grads.items():
        assert value.dtype == dtypes[name], name
        # taps that mostly miss a small map have gradients that cancel to far below their terms (about 1 each)
        assert_relative_error(value, expected_grads[name], bound, floor=1.0)
    buffers, expected_buffers = _buffers(block), _buffers(reference_block)
    for name, value in buffers.items():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(value, expected_buffers[name]), name
        else:
            assert_relative_error(value, expected_buffers[name], bound)


def test_tap_positions_are_where_the_dilated_kernels_put_each_tap():
    """Each branch's tap (i, j) lands where the dilated, centred kernel (``dilate_kernel`` and zero padding, as
    ``reparameterize`` builds it) has that tap's weight."""
    for kernel_size, (sizes, dilations) in DILATED_BRANCHES.items():
        branches = [(kernel_size, 1), *zip(sizes, dilations, strict=True)]
        positions, owners = branch_tap_positions(kernel_size, branches)
        assert owners == [b for b, (k, _) in enumerate(branches) for _ in range(k * k)]
        start = 0
        for k, r in branches:
            marked = torch.arange(1.0, k * k + 1).view(1, 1, k, k)
            ring = (kernel_size - (r * (k - 1) + 1)) // 2
            grid = F.pad(dilate_kernel(marked, r), [ring] * 4).flatten()
            assert grid[positions[start : start + k * k]].tolist() == marked.flatten().tolist()
            assert int(grid.count_nonzero()) == k * k
            start += k * k
    with pytest.raises(ValueError, match="do not fit"):
        branch_tap_positions(5, [(5, 1), (5, 2)])


@pytest.mark.parametrize("kernel_size", sorted(DILATED_BRANCHES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_merged_form_equals_the_branches_in_float64(kernel_size, mode):
    """Every kernel size's branch table, training and eval, on maps wider and narrower than the kernel."""
    block = _randomise(DilatedReparamBlock(3, kernel_size, backend="torch", merge_branches="always").double())
    getattr(block, mode)()
    for shape, channels_last in [((2, 3, 9, 11), False), ((3, 3, 5, 4), True)]:
        _compare(block, _input(shape, channels_last=channels_last), 1e-12)


def test_merged_form_follows_each_batch_norm_setting():
    """Momentum None (a cumulative average), two training steps (the running statistics and
    ``num_batches_tracked`` keep following the branches'), not tracking but keeping the buffers, and no running
    statistics (batch statistics in eval too)."""
    block = _randomise(DilatedReparamBlock(3, 7, backend="torch", merge_branches="always").double()).train()
    for bn in [block.origin_bn] + [bn for *_, bn in block.branches()]:
        bn.momentum = None
    reference = copy.deepcopy(block)
    _compare(block, _input((2, 3, 6, 7)), 1e-12, reference)
    _compare(block, _input((2, 3, 6, 7), seed=3), 1e-12, reference)
    assert int(block.origin_bn.num_batches_tracked) == 2
    kept = copy.deepcopy(block)  # not tracking, buffers kept: training leaves them alone, eval reads them
    for module in kept.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.track_running_stats = False
    _compare(kept, _input((2, 3, 6, 7)), 1e-12)
    _compare(kept.eval(), _input((2, 3, 6, 7)), 1e-12)
    untracked = _randomise(DilatedReparamBlock(3, 7, backend="torch", merge_branches="always").double())
    for module in untracked.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    _compare(untracked.eval(), _input((2, 3, 6, 7)), 1e-12)


def test_parameter_gradients_accumulate_separately_and_differentiate_once():
    """Two backward passes leave each parameter twice its own gradient (no two BNs share a gradient tensor); a
    second differentiation (a gradient penalty) raises instead of giving wrong second derivatives."""
    block = _randomise(DilatedReparamBlock(3, 7, backend="torch", merge_branches="always").double()).train()
    x = _input((2, 3, 6, 6))
    block(x).sum().backward()
    first = {name: p.grad.clone() for name, p in block.named_parameters()}
    block(x).sum().backward()
    for name, p in block.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[name], rtol=1e-12, atol=1e-12)
    x.requires_grad_()
    (dx,) = torch.autograd.grad(block(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.square().sum().backward()


def test_layout_cache_survives_inference_mode():
    """The index tensors cached by a first call under ``torch.inference_mode`` serve later calls that record
    autograd (an inference tensor cannot be saved for backward)."""
    from zoo.layers import dilated_reparam

    dilated_reparam._LAYOUTS.clear()
    block = _randomise(DilatedReparamBlock(3, 7, backend="torch", merge_branches="always").double())
    x = _input((2, 3, 6, 6))
    with torch.inference_mode():
        block.eval()(x)
    for mode in ("eval", "train"):
        _compare(getattr(block, mode)(), x, 1e-12)


def test_falls_back_to_the_branches_where_the_merge_would_differ(monkeypatch):
    """A BatchNorm subclass (SyncBatchNorm's statistics span processes), BNs in different modes, and
    ``merge_branches="never"`` (and ``"eval"`` in training) run the branches; one value per channel in training
    raises BatchNorm's error."""

    def refuse(self, x):
        raise AssertionError("the merged form ran")

    class OtherNorm(torch.nn.BatchNorm2d):
        pass

    block = _randomise(DilatedReparamBlock(3, 7, backend="torch", merge_branches="always").double())
    x = _input((2, 3, 6, 6))
    expected = copy.deepcopy(block).train().forward_branches(x)
    monkeypatch.setattr(DilatedReparamBlock, "forward_merged", refuse)
    other = copy.deepcopy(block).train()
    other.origin_bn.__class__ = OtherNorm
    torch.testing.assert_close(other(x), expected)
    mixed = copy.deepcopy(block).train()
    mixed.dil_bn_k5_1.eval()
    torch.testing.assert_close(mixed(x), mixed.forward_branches(x))
    for mode in ("train", "eval"):
        unmerged = getattr(copy.deepcopy(block), mode)()
        unmerged.merge_branches = "never"
        torch.testing.assert_close(unmerged(x), unmerged.forward_branches(x))
    by_default = copy.deepcopy(block).train()
    by_default.merge_branches = "eval"
    torch.testing.assert_close(by_default(x), expected)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        copy.deepcopy(block).train()(_input((1, 3, 1, 1)))


def test_merge_branches_reaches_every_block_and_is_checked():
    model = create_model("unireplknet_a", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), merge_branches="always")
    blocks = [m for m in model.modules() if isinstance(m, DilatedReparamBlock)]
    assert blocks and all(b.merge_branches == "always" for b in blocks)
    defaults = [m for m in create_model("unireplknet_a").modules() if isinstance(m, DilatedReparamBlock)]
    assert all(b.merge_branches == "eval" for b in defaults)
    with pytest.raises(ValueError, match="did you mean 'always'"):
        DilatedReparamBlock(3, 7, merge_branches="alway")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_merged_form_under_bfloat16_autocast(mode):
    """Under autocast both forms stay within bfloat16's rounding of the float64 branches (the merged one rounds
    its merged kernel and adds its input-gradient terms in bfloat16). The output gradient is centred per channel,
    as in UniRepLKNet, where a BN follows the block: the merged input gradient's rounding is relative to the size
    of g, the branches' (whose BNs centre g in float32) to that of g - mean(g)."""
    block = _randomise(DilatedReparamBlock(4, 13, backend="torch", merge_branches="always"))
    getattr(block, mode)()
    reference = copy.deepcopy(block).double()
    x = _input((2, 4, 10, 9), dtype=torch.float32, channels_last=True)
    grad = _input(x.shape, seed=2)
    grad = (grad - grad.mean((0, 2, 3), keepdim=True)).bfloat16()  # the float64 reference sees the same values
    expected, expected_grads = _run(reference, x.double(), grad.double(), branches=True)
    for branches in (False, True):
        candidate = copy.deepcopy(block)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, grads = _run(candidate, x, grad, branches)
        assert out.dtype == torch.bfloat16
        assert_relative_error(out, expected, 1.5e-2)
        for name, value in grads.items():
            assert_relative_error(value, expected_grads[name], 2.5e-2, floor=1.0)
        for name, value in _buffers(candidate).items():
            assert_relative_error(value, _buffers(reference)[name], 2e-2)


@pytest.mark.parametrize(
    "kernel_size, dtype",
    [(7, torch.float32), (7, torch.bfloat16), (13, torch.float32)],  # 7: the direct kernels; 13: the implicit GEMM
)
def test_merged_form_on_the_triton_kernels(kernel_size, dtype):
    """The merged training form with every convolution and gradient on the Triton kernels (the interpreter on a
    CPU) against the float64 branches on the PyTorch backend."""
    block = _randomise(DilatedReparamBlock(3, kernel_size, backend="triton", merge_branches="always")).train()
    reference = copy.deepcopy(block).double()
    reference.backend = "torch"
    for module in reference.modules():
        if hasattr(module, "backend"):
            module.backend = "torch"
    x = _input((2, 3, 7, 6), channels_last=True)
    block, x = block.to(DEVICE), x.to(DEVICE)
    bound = 1e-5 if dtype == torch.float32 else 2.5e-2
    _compare(block, x.to(dtype), bound, reference.to(DEVICE), x)


def test_merged_training_form_compiles_into_one_graph():
    """``torch.compile(fullgraph=True)`` traces the merged training form (its autograd Function, the running
    statistics' updates) and gives the eager output, gradients and statistics (on the PyTorch backend; the Triton
    backend's depthwise gradients under ``torch.compile``: tests/kernels/test_dwconv.py)."""
    block = _randomise(DilatedReparamBlock(3, 7, backend="torch", merge_branches="always")).train()
    compiled = copy.deepcopy(block)
    x = _input((2, 3, 6, 5), dtype=torch.float32)
    grad = _input(x.shape, dtype=torch.float32, seed=2)
    out, grads = _run(block, x, grad, branches=False)
    compiled.forward = torch.compile(compiled.forward, fullgraph=True)
    compiled_out, compiled_grads = _run(compiled, x, grad, branches=False)
    torch.testing.assert_close(compiled_out, out, rtol=1e-4, atol=1e-4)
    for name, value in grads.items():
        torch.testing.assert_close(compiled_grads[name], value, rtol=1e-4, atol=1e-4)
    for name, value in _buffers(block).items():
        torch.testing.assert_close(_buffers(compiled)[name], value, rtol=1e-5, atol=1e-5)
