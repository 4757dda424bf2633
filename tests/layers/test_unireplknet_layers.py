"""UniRepLKNet layers: the Dilated Reparam Block (official branch table and keys, equal to its re-parameterised
form for every kernel size), the block (keys in both forms, re-parameterisation with GRN and layer scale),
idempotence, kernels larger than the map, backends, bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models import get_notrace_modules

from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.layers import DILATED_BRANCHES, DepthwiseConv2d, DilatedReparamBlock, UniRepLKNetBlock
from zoo.layers.unireplknet import dilate_kernel

KERNELS = [5, 7, 9, 11, 13, 15, 17]
TABLE = {  # docs/semantics.md §3.2: kernel size -> (branch kernel sizes, dilations)
    17: ([5, 9, 3, 3, 3], [1, 2, 4, 5, 7]),
    15: ([5, 7, 3, 3, 3], [1, 2, 3, 5, 7]),
    13: ([5, 7, 3, 3, 3], [1, 2, 3, 4, 5]),
    11: ([5, 5, 3, 3, 3], [1, 2, 3, 4, 5]),
    9: ([5, 5, 3, 3], [1, 2, 3, 4]),
    7: ([5, 3, 3], [1, 2, 3]),
    5: ([3, 3], [1, 2]),
}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@torch.no_grad()
def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights, non-trivial batch-norm statistics and affine terms, non-zero GRN gamma/beta and layer scale."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith(("gamma", "beta")):
            p.copy_(0.2 + 0.3 * torch.rand(p.shape, generator=generator))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            m.weight.copy_(0.5 + torch.rand(c, generator=generator))
            m.bias.copy_(0.1 * torch.randn(c, generator=generator))
    return module.eval()


def _input(shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _official_forward(block: DilatedReparamBlock, x: torch.Tensor) -> torch.Tensor:
    """The official training-form computation with nn.functional: each branch padded (r (k - 1) + 1) // 2."""
    c, k_big = block.channels, block.kernel_size
    out = block.origin_bn(F.conv2d(x, block.lk_origin.weight, None, 1, k_big // 2, 1, c))
    for k, r in zip(TABLE[k_big][0], TABLE[k_big][1], strict=True):
        conv, bn = getattr(block, f"dil_conv_k{k}_{r}"), getattr(block, f"dil_bn_k{k}_{r}")
        out = out + bn(F.conv2d(x, conv.weight, None, 1, (r * (k - 1) + 1) // 2, r, c))
    return out


# ------------------------------------------------------------------------------------------------ Dilated Reparam Block


def test_branch_table_is_the_official_one():
    assert {k: (list(s), list(r)) for k, (s, r) in DILATED_BRANCHES.items()} == TABLE


@pytest.mark.parametrize("kernel_size", KERNELS)
def test_dilated_reparam_block_keys_in_both_forms(kernel_size):
    block = DilatedReparamBlock(8, kernel_size)
    sizes, rates = TABLE[kernel_size]
    expected = {"lk_origin.weight"} | {
        f"origin_bn.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    for k, r in zip(sizes, rates, strict=True):
        expected |= {f"dil_conv_k{k}_{r}.weight"}
        expected |= {
            f"dil_bn_k{k}_{r}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        }
    state = block.state_dict()
    assert set(state) == expected
    assert state["lk_origin.weight"].shape == (8, 1, kernel_size, kernel_size)
    assert state[f"dil_conv_k{sizes[-1]}_{rates[-1]}.weight"].shape == (8, 1, sizes[-1], sizes[-1])
    block.reparameterize()
    deployed = DilatedReparamBlock(8, kernel_size, deploy=True)
    assert set(block.state_dict()) == set(deployed.state_dict()) == {"lk_origin.weight", "lk_origin.bias"}
    deployed.load_state_dict(block.state_dict(), strict=True)


@pytest.mark.parametrize("kernel_size", KERNELS)
def test_dilated_reparam_block_equals_its_merged_kernel(kernel_size):
    block = _randomise(DilatedReparamBlock(6, kernel_size, backend="torch"), seed=kernel_size)
    x = _input((2, 6, 19, 17))
    with torch.no_grad():
        expected = _official_forward(block, x)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
        block.reparameterize()
        assert block.deploy and not hasattr(block, "origin_bn")
        assert block.lk_origin.weight.shape == (6, 1, kernel_size, kernel_size)
        merged = block(x)
        assert (merged - expected).abs().max() <= 1e-5
        before = {k: v.clone() for k, v in block.state_dict().items()}
        block.reparameterize()  # idempotent
        assert all(torch.equal(block.state_dict()[k], v) for k, v in before.items())
        assert set(block.state_dict()) == set(before)


def test_kernel_larger_than_the_map():
    """Stage 4 of UniRepLKNet at 224 px: a 7x7 map, K=13 (and dilated branches reaching 11 pixels): zero padding."""
    block = _randomise(DilatedReparamBlock(8, 13, backend="torch"))
    x = _input((1, 8, 7, 7))
    with torch.no_grad():
        expected = _official_forward(block, x)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
        block.reparameterize()
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
        tiny = _input((1, 8, 2, 3))
        assert block(tiny).shape == tiny.shape


@pytest.mark.parametrize("k,r", [(3, 2), (3, 5), (5, 1), (9, 2)])
def test_dilated_kernel_equals_the_dilated_convolution(k, r):
    w = _input((4, 1, k, k), seed=k + r)
    x = _input((1, 4, 23, 23))
    dense = dilate_kernel(w, r)
    assert dense.shape[-1] == r * (k - 1) + 1
    expected = F.conv2d(x, w, None, 1, r * (k - 1) // 2, r, 4)
    torch.testing.assert_close(F.conv2d(x, dense, None, 1, dense.shape[-1] // 2, 1, 4), expected)


def test_training_mode_uses_batch_statistics_and_trains():
    block = DilatedReparamBlock(4, 7, backend="torch").train()
    x = _input((2, 4, 9, 9)).requires_grad_()
    out = block(x)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    assert block.origin_bn.num_batches_tracked.item() == 1


# ------------------------------------------------------------------------------------------------ the block


def _block_keys(kernel_size: int, deploy: bool) -> set[str]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {
        "se.down.weight",
        "se.down.bias",
        "se.up.weight",
        "se.up.bias",
        "pwconv1.1.weight",
        "pwconv1.1.bias",
        "act.1.gamma",
        "pwconv2.0.weight",
    }
    if deploy:
        keys |= {"pwconv2.0.bias"}
        keys |= (
            {"dwconv.lk_origin.weight", "dwconv.lk_origin.bias"}
            if kernel_size >= 7
            else {"dwconv.weight", "dwconv.bias"}
        )
        return keys
    keys |= {"act.1.beta", "gamma"} | {f"norm.{n}" for n in bn} | {f"pwconv2.2.{n}" for n in bn}
    if kernel_size >= 7:
        keys |= {f"dwconv.{k}" for k in DilatedReparamBlock(4, kernel_size).state_dict()}
    else:
        keys |= {"dwconv.weight"}
    return keys


@pytest.mark.parametrize("kernel_size", [3, 5, 13])
def test_block_keys_in_both_forms(kernel_size):
    block = UniRepLKNetBlock(16, kernel_size)
    state = block.state_dict()
    assert set(state) == _block_keys(kernel_size, deploy=False)
    assert state["act.1.gamma"].shape == state["act.1.beta"].shape == (1, 1, 1, 64)
    assert state["se.down.weight"].shape == (4, 16, 1, 1) and state["pwconv1.1.weight"].shape == (64, 16)
    assert state["pwconv2.0.weight"].shape == (16, 64) and state["gamma"].shape == (16,)
    deployed = UniRepLKNetBlock(16, kernel_size, deploy=True)
    assert set(deployed.state_dict()) == _block_keys(kernel_size, deploy=True)
    block.reparameterize()
    assert set(block.state_dict()) == _block_keys(kernel_size, deploy=True)
    deployed.load_state_dict(block.state_dict(), strict=True)
    assert block.deployed and deployed.deployed


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 13])
def test_block_equals_its_reparameterised_form(kernel_size):
    block = _randomise(UniRepLKNetBlock(12, kernel_size, backend="torch"), seed=kernel_size)
    assert block.gamma.abs().min() > 0.1 and block.act[1].beta.abs().min() > 0.1
    x = _input((2, 12, 11, 9))
    with torch.no_grad():
        expected = block(x)
        assert (expected - x).std() > 0.1  # the residual branch matters
        block.reparameterize()
        assert block.gamma is None and isinstance(block.norm, torch.nn.Identity) and not block.act[1].use_bias
        assert (block(x) - expected).abs().max() <= 1e-4
        before = {k: v.clone() for k, v in block.state_dict().items()}
        block.reparameterize()  # idempotent
        if kernel_size >= 7:
            block.dwconv.reparameterize()
        assert {k: v for k, v in block.state_dict().items()}.keys() == before.keys()
        assert all(torch.equal(block.state_dict()[k], v) for k, v in before.items())
        deployed = UniRepLKNetBlock(12, kernel_size, deploy=True, backend="torch").eval()
        deployed.load_state_dict(block.state_dict(), strict=True)
        assert (deployed(x) - expected).abs().max() <= 1e-4


def test_block_without_layer_scale_reparameterises():
    block = _randomise(UniRepLKNetBlock(8, 7, layer_scale_init_value=None, backend="torch"))
    assert block.gamma is None and "gamma" not in block.state_dict()
    x = _input((1, 8, 6, 6))
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert (block(x) - expected).abs().max() <= 1e-4


def test_block_drop_path_and_backward():
    block = UniRepLKNetBlock(8, 13, drop_path=0.2, layer_scale_init_value=0.5, backend="torch").train()
    assert block.drop_path.drop_prob == pytest.approx(0.2)
    out = block(_input((2, 8, 7, 7)))
    out.square().mean().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("deploy", [False, True], ids=["training-form", "deployed"])
def test_cpu_inference_activation_is_the_modules_function(cpu_compile_mode, deploy):
    """CPU inference with backend="auto" runs GELU + GRN as one function (compiled, or eagerly: the fixture); it
    equals the modules' result, with GRN's beta in the training form and without it deployed."""
    block = _randomise(UniRepLKNetBlock(12, 3, deploy=deploy), seed=3)
    h = _input((2, 5, 7, 48))
    with torch.no_grad():
        expected = block.act(h)
        actual = block._activation(h)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert (expected - torch.nn.functional.gelu(h)).abs().max() > 0.1  # GRN's scale and shift matter


def test_cpu_activation_dispatch(monkeypatch):
    """The fused function runs for CPU inference on backend="auto" only: with a gradient wanted, on
    backend="torch" (or ZOO_BACKEND=torch) and under torch.compile the modules run."""
    import zoo.kernels._cpu_compile as compile_module

    calls = []
    real_run = compile_module.run

    def spy(kind, fn, *args):
        calls.append(kind)
        return real_run(kind, fn, *args)

    monkeypatch.setattr(compile_module, "run", spy)
    block = _randomise(UniRepLKNetBlock(8, 3, deploy=True))
    x = _input((1, 8, 5, 5))
    with torch.no_grad():
        expected = block(x)
    assert calls == ["gelu_grn_deployed"]
    block(x.requires_grad_())  # a gradient wanted: the modules, recorded by autograd
    assert calls == ["gelu_grn_deployed"]
    with torch.no_grad():
        monkeypatch.setenv("ZOO_BACKEND", "torch")
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)
        monkeypatch.delenv("ZOO_BACKEND")
        torch.testing.assert_close(torch.compile(block, fullgraph=True)(x), expected, rtol=1e-5, atol=1e-5)
    assert calls == ["gelu_grn_deployed"]


# ------------------------------------------------------------------------------------------------ backends, errors


def test_modules_are_fx_leaves():
    leaves = get_notrace_modules()
    assert DepthwiseConv2d in leaves and DilatedReparamBlock in leaves


def test_backend_reaches_every_depthwise_conv():
    block = UniRepLKNetBlock(8, 13, backend="torch")
    assert block.dwconv.backend == "torch"
    assert {m.backend for m in block.modules() if isinstance(m, DepthwiseConv2d)} == {"torch"}
    block.reparameterize()
    assert block.dwconv.lk_origin.backend == "torch" and block.dwconv.backend == "torch"


def test_torch_and_triton_backends_agree():
    """A tiny K=7 block (branches with dilation 1, 2, 3) through the Triton kernel (the interpreter on CPU),
    forward and input gradient, then its deployed form."""
    torch.manual_seed(0)
    reference = _randomise(UniRepLKNetBlock(4, 7, backend="torch")).to(DEVICE)
    triton_block = UniRepLKNetBlock(4, 7, backend="triton").eval().to(DEVICE)
    triton_block.load_state_dict(reference.state_dict())
    x = _input((1, 4, 6, 6)).to(DEVICE)
    x_ref, x_tri = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_tri = reference(x_ref), triton_block(x_tri)
    assert_close(y_tri, y_ref, torch.float32, scale=10.0)
    y_ref.square().sum().backward()
    y_tri.square().sum().backward()
    assert_close(x_tri.grad, x_ref.grad, torch.float32, scale=10.0)
    with torch.no_grad():
        triton_block.reparameterize()
        assert_close(triton_block(x), y_ref.detach(), torch.float32, scale=10.0)


@pytest.mark.parametrize("switch", ["fused", "ZOO_GELU_GRN=0"])
def test_triton_blocks_run_gelu_grn_as_one_op(switch, monkeypatch):
    """With the Triton backend the block's GELU + GRN is zoo.kernels.gelu_grn (its result in autocast's dtype under
    autocast), with the modules' output and gradients (GRN's gamma and beta included); ZOO_GELU_GRN=0 runs the
    modules."""
    import zoo.layers.unireplknet as layers

    calls = []
    real = layers.gelu_grn

    def spy(*args, **kwargs):
        calls.append(kwargs.get("out_dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(layers, "gelu_grn", spy)
    if switch != "fused":
        monkeypatch.setenv("ZOO_GELU_GRN", "0")
    torch.manual_seed(1)
    reference = _randomise(UniRepLKNetBlock(8, 3, backend="torch")).to(DEVICE)
    block = UniRepLKNetBlock(8, 3, backend="triton").to(DEVICE).train(reference.training)
    block.load_state_dict(reference.state_dict())
    x = _input((2, 8, 5, 6)).to(DEVICE)
    for layer in (reference, block):
        layer(x.clone().requires_grad_()).square().sum().backward()
    assert calls == ([] if switch != "fused" else [torch.float32])
    assert_close(block(x).detach(), reference(x).detach(), torch.float32, scale=10.0)
    for p, q in zip(reference.parameters(), block.parameters(), strict=True):
        assert_relative_error(q.grad, p.grad, 1e-4)
    if switch == "fused":
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16), torch.no_grad():
            block(x)
        assert calls[-1] == torch.bfloat16


def _spy_batch_norm_add(monkeypatch, op: str = "batch_norm_add") -> list[bool]:
    """The ``training`` argument (batch statistics) of every call the layers make to ``op`` (batch_norm_add or
    batch_norm_se), in order."""
    import zoo.layers.unireplknet as layers

    calls = []
    real = getattr(layers, op)
    training_index = {"batch_norm_add": 6, "batch_norm_se": 5}[op]

    def spy(*args, **kwargs):
        calls.append(args[training_index])
        return real(*args, **kwargs)

    monkeypatch.setattr(layers, op, spy)
    return calls


@pytest.mark.parametrize(
    "case", ["train", "train-drop-path", "momentum-none", "eval", "not-tracking", "ZOO_BATCH_NORM_ADD=0"]
)
def test_triton_blocks_run_the_tail_as_one_op(case, monkeypatch):
    """With the Triton backend, ``x + drop_path(gamma * BN(Linear_2(h)))`` is zoo.kernels.batch_norm_add (its result
    float32 under autocast, as the modules'), with the modules' output, gradients, running statistics,
    num_batches_tracked and stochastic depth's mask (the same draws under one seed); ZOO_BATCH_NORM_ADD=0 runs the
    modules."""
    calls = _spy_batch_norm_add(monkeypatch)
    if case == "ZOO_BATCH_NORM_ADD=0":
        monkeypatch.setenv("ZOO_BATCH_NORM_ADD", "0")
    drop_path = 0.5 if case == "train-drop-path" else 0.0
    torch.manual_seed(2)
    blocks = []
    for backend in ("torch", "triton"):
        block = _randomise(UniRepLKNetBlock(8, 3, drop_path=drop_path, backend=backend))
        if case == "momentum-none":
            block.pwconv2[2].momentum = None
        if case == "not-tracking":
            bn = block.pwconv2[2]
            bn.track_running_stats, bn.running_mean, bn.running_var, bn.num_batches_tracked = False, None, None, None
        blocks.append(block.to(DEVICE).train(case != "eval"))
    reference, block = blocks
    x = _input((3, 8, 3, 4)).to(DEVICE)
    for step in range(2 if case == "momentum-none" else 1):  # (a cumulative average: its second step differs)
        outputs = []
        for layer in (reference, block):
            torch.manual_seed(10 + step)  # the same drop-path draws
            y = layer(x.clone().requires_grad_())
            y.square().sum().backward()
            outputs.append(y.detach())
        assert_close(outputs[1], outputs[0], torch.float32, scale=10.0)
    fused = case != "ZOO_BATCH_NORM_ADD=0"
    assert calls == ([case != "eval"] * (2 if case == "momentum-none" else 1) if fused else [])
    # in training, the last BN cancels most of the gradient of what shifts every position alike (pwconv1's bias
    # comes out near zero): the gradients within 1e-4 of the largest one
    largest = max(p.grad.abs().max().item() for p in reference.parameters())
    for p, q in zip(reference.parameters(), block.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4 * largest)
    for name, u in reference.state_dict().items():  # running statistics and num_batches_tracked
        assert_close(block.state_dict()[name], u, torch.float32, scale=10.0)
    if fused:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16), torch.no_grad():
            assert block(x).dtype == reference(x).dtype == torch.float32


@pytest.mark.parametrize("case", ["train", "momentum-none", "eval", "not-tracking", "ZOO_BATCH_NORM_SE=0"])
def test_triton_blocks_run_the_norm_and_se_as_one_op(case, monkeypatch):
    """With the Triton backend, ``se(norm(dwconv(x)))`` is zoo.kernels.batch_norm_se (its result bf16 under autocast,
    as the modules'), with the modules' output, gradients, running statistics and num_batches_tracked;
    ZOO_BATCH_NORM_SE=0 runs the modules."""
    calls = _spy_batch_norm_add(monkeypatch, "batch_norm_se")
    if case == "ZOO_BATCH_NORM_SE=0":
        monkeypatch.setenv("ZOO_BATCH_NORM_SE", "0")
    torch.manual_seed(3)
    blocks = []
    for backend in ("torch", "triton"):
        block = _randomise(UniRepLKNetBlock(16, 3, backend=backend))
        if case == "momentum-none":
            block.norm.momentum = None
        if case == "not-tracking":
            bn = block.norm
            bn.track_running_stats, bn.running_mean, bn.running_var, bn.num_batches_tracked = False, None, None, None
        blocks.append(block.to(DEVICE).train(case != "eval"))
    blocks[1].load_state_dict(blocks[0].state_dict())
    reference, block = blocks
    x = _input((3, 16, 3, 4)).to(DEVICE)
    steps = 2 if case == "momentum-none" else 1  # (a cumulative average: its second step differs)
    for _ in range(steps):
        outputs = []
        for layer in (reference, block):
            y = layer(x.clone().requires_grad_())
            y.square().sum().backward()
            outputs.append(y.detach())
        assert_close(outputs[1], outputs[0], torch.float32, scale=10.0)
    fused = case != "ZOO_BATCH_NORM_SE=0"
    assert calls == ([case != "eval"] * steps if fused else [])
    largest = max(p.grad.abs().max().item() for p in reference.parameters())
    for (name, p), q in zip(reference.named_parameters(), block.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4 * largest, msg=name)
    for name, u in reference.state_dict().items():  # running statistics and num_batches_tracked
        assert_close(block.state_dict()[name], u, torch.float32, scale=10.0)
    if fused:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16), torch.no_grad():
            calls.clear()
            block.pwconv1.register_forward_hook(lambda _m, args, _out: calls.append(args[0].dtype))
            block(x)
        assert calls == [case != "eval", torch.bfloat16]  # (the op's call, then the first Linear's input dtype)


def _batch_norm_refuses_eps_0_in_eval() -> bool:
    """Whether this torch's ``F.batch_norm`` raises for eps 0 with running statistics (2.11-2.13 do; 2.14 only in
    training)."""
    try:
        F.batch_norm(torch.ones(2, 1), torch.zeros(1), torch.ones(1), eps=0.0)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(
    "change",
    [
        "bias None",
        "eps 0 in eval",
        "momentum 2",
        "float64 gamma",
        "hook on the BN",
        "hook on act",
        "hook on the SE",
        "BN1 bias None",
        "BN1 momentum 2",
        "hook on BN1",
        "3 channels (no SE width)",
        "global hook",
    ],
)
def test_triton_blocks_run_the_modules_where_the_fused_ops_would_differ(change):
    """Where a fused op would raise or skip something the modules do (hooks, BN settings the op does not take,
    dtypes its kernels do not take), the Triton block runs the modules: its output equals the torch block's, and the
    hooks run."""
    torch.manual_seed(4)
    channels = 3 if change == "3 channels (no SE width)" else 8
    blocks = [_randomise(UniRepLKNetBlock(channels, 3, backend=backend)).to(DEVICE) for backend in ("torch", "triton")]
    blocks[1].load_state_dict(blocks[0].state_dict())
    calls, handles = [], []
    for block in blocks:
        bn = block.pwconv2[2]
        block.train(change != "eps 0 in eval")
        if change == "bias None":
            bn.bias = None
        elif change == "eps 0 in eval":
            bn.eps = 0.0
        elif change == "momentum 2":
            bn.momentum = 2.0
        elif change == "float64 gamma":
            block.gamma.data = block.gamma.data.double()
        elif change == "hook on the BN":
            handles.append(bn.register_forward_hook(lambda *_: calls.append("bn")))
        elif change == "hook on act":
            handles.append(block.act[1].register_forward_pre_hook(lambda *_: calls.append("grn")))
        elif change == "hook on the SE":
            handles.append(block.se.register_forward_hook(lambda *_: calls.append("se")))
        elif change == "BN1 bias None":
            block.norm.bias = None
        elif change == "BN1 momentum 2":
            block.norm.momentum = 2.0
        elif change == "hook on BN1":
            handles.append(block.norm.register_forward_hook(lambda *_: calls.append("bn1")))
    if change == "global hook":
        handles.append(torch.nn.modules.module.register_module_forward_hook(lambda *_: calls.append("any")))
    x = _input((2, channels, 5, 6)).to(DEVICE)
    if change == "eps 0 in eval" and _batch_norm_refuses_eps_0_in_eval():  # torch before 2.14 refuses it
        for block in blocks:  # both blocks raise torch's own error: the Triton one ran the modules too
            with pytest.raises(ValueError, match="eps"):
                block(x)
        return
    outputs, hook_calls = [], []
    try:
        for block in blocks:
            calls.clear()
            outputs.append(block(x))
            hook_calls.append(len(calls))
    finally:
        for handle in handles:
            handle.remove()
    assert_close(outputs[1].detach(), outputs[0].detach().to(outputs[1].dtype), torch.float32, scale=10.0)
    if "hook" in change:  # both blocks ran the hooked modules
        assert hook_calls[0] > 0 and hook_calls[1] == hook_calls[0], hook_calls


def test_triton_branches_add_each_batch_norm_into_the_sum(monkeypatch):
    """On the Triton backend each dilated branch's BN and its add into the branches' sum are one batch_norm_add
    (K = 7: three branches), with the torch backend's output, gradients and running statistics over a training step
    and then an eval call (the switch ZOO_BATCH_NORM_ADD=0 is the block tail's test's)."""
    calls = _spy_batch_norm_add(monkeypatch)
    blocks = [
        _randomise(DilatedReparamBlock(4, 7, backend=backend, merge_branches="never")).to(DEVICE)
        for backend in ("torch", "triton")
    ]
    blocks[1].load_state_dict(blocks[0].state_dict())
    x = _input((2, 4, 7, 7)).to(DEVICE)
    outputs = []
    for block in blocks:
        y = block.train()(x.clone().requires_grad_())
        y.square().sum().backward()
        with torch.no_grad():
            outputs.append((y.detach(), block.eval()(x)))
    for triton_output, torch_output in zip(outputs[1], outputs[0], strict=True):
        assert_close(triton_output, torch_output, torch.float32, scale=10.0)
    assert calls == [True] * 3 + [False] * 3
    for p, q in zip(blocks[0].parameters(), blocks[1].parameters(), strict=True):
        assert_relative_error(q.grad, p.grad, 1e-4)
    for name, u in blocks[0].state_dict().items():  # running statistics and num_batches_tracked
        assert_close(blocks[1].state_dict()[name], u, torch.float32, scale=10.0)


def test_bad_arguments_and_input():
    with pytest.raises(ValueError, match=r"kernel_size in \[5, 7, 9, 11, 13, 15, 17\], got 19"):
        DilatedReparamBlock(8, 19)
    with pytest.raises(ValueError, match="kernel_size must be 3, 5 or one of 7..17"):
        UniRepLKNetBlock(8, 4)
    with pytest.raises(ValueError, match="odd positive int"):
        DepthwiseConv2d(8, 4)
    with pytest.raises(
        ValueError,
        match=r"DilatedReparamBlock expects input \[N, C, H, W\] .* C = 8, got shape "
        r"\[1, 4, 9, 9\]",
    ):
        DilatedReparamBlock(8, 7)(torch.randn(1, 4, 9, 9))
    with pytest.raises(ValueError, match=r"DepthwiseConv2d expects input .* got shape \[8, 9, 9\]"):
        DepthwiseConv2d(8, 3)(torch.randn(8, 9, 9))
