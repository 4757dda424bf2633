"""zoo::batch_norm_se: both backends (the Triton kernels through the interpreter on CPU) against an independent
float64 computation (``F.batch_norm`` and the SE block's layers in float64), the reference against UniRepLKNet's
modules, layouts, the running statistics, the registered ops under opcheck and torch.compile, and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels._backend import ticket_counters
from zoo.kernels._sample_tiles import blocks
from zoo.kernels.batch_norm_se import batch_norm_se, batch_norm_se_backward, batch_norm_se_forward

BACKENDS = ["torch", "triton"]
f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
SE_NAMES = ("down_weight", "down_bias", "up_weight", "up_bias")

# (shape, input dtype, SE hidden width R, affine batch norm, SE biases, running statistics, the input's mean). On
# the interpreter a tile is 16 channels x 4 positions, the last programs walk the samples one at a time, and a
# sample's map splits into chunks until the grid has about 24 programs: [2, 40, 5, 7] has three channel blocks (the
# last half masked) and three chunks (the last tile partial); [3, 24, 5, 7] chunks of two tiles; [1, 24, 9, 4] nine
# chunks of one tile; [5, 16, 1, 1] one position (a partial tile) and five samples; [2, 48, 3, 4] three whole channel
# blocks. A mean of 5 (standard deviation 0.1) checks the statistics' precision.
CASES = [
    ((2, 40, 5, 7), f32, 10, True, True, True, 0.0),
    ((3, 24, 5, 7), bf16, 6, True, True, True, 0.0),  # autocast: the depthwise convolution's bf16 output
    ((2, 40, 3, 5), f16, 3, False, False, True, 0.0),  # no affine terms, no SE biases
    ((1, 24, 9, 4), bf16, 6, True, True, True, 5.0),
    ((5, 16, 1, 1), f32, 4, True, True, True, 0.0),
    ((2, 48, 3, 4), f32, 12, True, True, False, 5.0),  # no running statistics: training only
]


def _case_id(case) -> str:
    shape, dtype, hidden, affine, se_bias, running, mean = case
    names = {f32: "f32", bf16: "bf16", f16: "f16"}
    return (
        f"{'x'.join(map(str, shape))}-{names[dtype]}-R{hidden}{'-affine' if affine else ''}"
        f"{'-se_bias' if se_bias else ''}{'-running' if running else ''}-mean{mean:g}"
    )


def _parameters(channels: int, hidden: int, affine=True, se_bias=True, running=True, seed=0) -> dict:
    """The op's vectors and SE weights (None where absent): non-trivial running statistics and affine terms, SE
    layers large enough that the gate varies."""
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape, generator=gen)).to(DEVICE)

    return dict(
        running_mean=draw(channels, scale=0.3) if running else None,
        running_var=(0.5 + torch.rand(channels, generator=gen)).to(DEVICE) if running else None,
        weight=draw(channels, scale=0.3, shift=1.0) if affine else None,
        bias=draw(channels, scale=0.2) if affine else None,
        down_weight=draw(hidden, channels, scale=channels**-0.5 * 2),
        down_bias=draw(hidden, scale=0.2) if se_bias else None,
        up_weight=draw(channels, hidden, scale=hidden**-0.5 * 2),
        up_bias=draw(channels, scale=0.2) if se_bias else None,
    )


def _input(shape, dtype, mean: float = 0.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    std = 0.1 if mean else 1.0
    return (mean + std * torch.randn(shape, generator=gen)).to(DEVICE, dtype)


def _copies(p: dict) -> dict:
    return {name: None if t is None else t.clone() for name, t in p.items()}


LEAVES = ("input", "weight", "bias") + SE_NAMES


def _run(x, dy, p, backend, training, momentum=0.1, eps=1e-5) -> dict:
    """Output, gradients (on fresh leaves) and the running statistics after the call (``p``'s, updated in place)."""
    leaves = {name: None if t is None else t.detach().requires_grad_(True) for name, t in dict(p, input=x).items()}
    out = batch_norm_se(
        leaves["input"], p["running_mean"], p["running_var"], leaves["weight"], leaves["bias"], training, momentum, eps,
        *(leaves[name] for name in SE_NAMES), backend=backend,
    )  # fmt: skip
    out.backward(dy)
    results = {name: None if leaves[name] is None else leaves[name].grad for name in LEAVES}
    results.update(out=out.detach(), running_mean=p["running_mean"], running_var=p["running_var"])
    return results


def _float64(x, dy, p, training, momentum=0.1, eps=1e-5) -> dict:
    """The same in float64 with ``F.batch_norm``, ``F.linear`` and autograd, independent of the op."""
    leaves = {
        name: None if t is None else t.detach().double().requires_grad_(True) for name, t in dict(p, input=x).items()
    }
    running_mean, running_var = (
        None if p[n] is None else p[n].double().clone() for n in ("running_mean", "running_var")
    )
    z = F.batch_norm(leaves["input"], running_mean, running_var, leaves["weight"], leaves["bias"], training, momentum,
                     eps)  # fmt: skip
    hidden = F.relu(F.linear(z.mean((2, 3)), leaves["down_weight"], leaves["down_bias"]))
    out = z * torch.sigmoid(F.linear(hidden, leaves["up_weight"], leaves["up_bias"]))[:, :, None, None]
    out.backward(dy.double())
    results = {name: None if leaves[name] is None else leaves[name].grad for name in LEAVES}
    results.update(out=out.detach(), running_mean=running_mean, running_var=running_var)
    return results


def _check(x, dy, p, backend, training, momentum=0.1, eps=1e-5, grad_bound=1e-5) -> dict:
    """The op on ``backend`` against :func:`_float64`: the output and the input's gradient to the rounding of their
    dtype, the parameters' gradients to ``grad_bound`` relative and the running statistics (float32 sums) to 1e-5
    relative."""
    actual = _run(x, dy, _copies(p), backend, training, momentum, eps)
    expected = _float64(x, dy, p, training, momentum, eps)
    out, dx = actual["out"], actual["input"]
    assert out.dtype == x.dtype and out.shape == x.shape and dx.dtype == x.dtype and dx.shape == x.shape
    assert_close(out, expected["out"], x.dtype, scale=float(expected["out"].abs().max().clamp_min(1.0)))
    assert_close(dx, expected["input"], x.dtype, scale=float(expected["input"].abs().max().clamp_min(1.0)))
    for name in LEAVES[1:]:
        if p[name] is None:
            assert actual[name] is None
            continue
        assert actual[name].dtype == p[name].dtype and actual[name].shape == p[name].shape
        assert_relative_error(actual[name], expected[name], grad_bound)
    for name in ("running_mean", "running_var"):
        if p[name] is None:
            continue
        if training and momentum > 0:
            assert not torch.equal(actual[name], p[name])  # the step was taken
        assert_relative_error(actual[name], expected[name], 1e-5)
    return actual


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case, training",
    [(case, training) for case in CASES for training in (True, False) if training or case[5]],  # eval needs running
    ids=lambda v: {True: "train", False: "eval"}[v] if isinstance(v, bool) else _case_id(v),
)
def test_forward_gradients_and_running_stats_match_float64(case, training, backend):
    shape, dtype, hidden, affine, se_bias, running, mean = case
    x = _input(shape, dtype, mean, seed=1)
    p = _parameters(shape[1], hidden, affine, se_bias, running, seed=1)
    # at a mean 50 times the spread, the per-sample means' float32 rounding (about 2e-7 of the mean) is about 1e-5 of
    # the spread: what the SE block's input, the normalised per-sample means, keep (docs/design.md §24)
    grad_bound = 1e-4 if mean else 1e-5
    _check(x, torch.randn(shape, device=DEVICE).to(dtype), p, backend, training, grad_bound=grad_bound)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_reference_is_the_modules(training, backend):
    """UniRepLKNet's ``se(norm(y))`` (nn.BatchNorm2d and the block's SEBlock) in float64: the op gives its output,
    gradients and running statistics (float32 computation, float64 comparison)."""
    from zoo.layers.unireplknet import SEBlock

    torch.manual_seed(2)
    norm = nn.BatchNorm2d(32).double().to(DEVICE)
    se = SEBlock(32, 8).double().to(DEVICE)
    with torch.no_grad():
        norm.running_mean.normal_(0, 0.3)
        norm.running_var.uniform_(0.5, 1.5)
        norm.weight.normal_(1, 0.3)
        norm.bias.normal_(0, 0.2)
    norm.train(training)
    x = torch.randn(3, 32, 5, 6, dtype=torch.float64, device=DEVICE)
    dy = torch.randn_like(x)
    leaf = x.clone().requires_grad_(True)
    running = (norm.running_mean.clone(), norm.running_var.clone())  # before the modules step them
    expected_out = se(norm(leaf))
    expected_out.backward(dy)
    params = [norm.weight, norm.bias, se.down.weight, se.down.bias, se.up.weight, se.up.bias]
    expected = [leaf.grad] + [t.grad for t in params]
    x32 = leaf.detach().float().requires_grad_(True)
    leaves = [t.detach().float().requires_grad_(True) for t in params]
    rm, rv = (t.float() for t in running)
    out = batch_norm_se(
        x32, rm, rv, leaves[0], leaves[1], training, norm.momentum, norm.eps, leaves[2].flatten(1), leaves[3],
        leaves[4].flatten(1), leaves[5], backend=backend,
    )  # fmt: skip
    out.backward(dy.float())
    assert_close(out, expected_out.detach(), f32, scale=float(expected_out.detach().abs().max()))
    for actual, wanted in zip([x32.grad] + [t.grad for t in leaves], expected, strict=True):
        assert_relative_error(actual, wanted, 1e-5)
    assert_relative_error(rm, norm.running_mean, 1e-6)
    assert_relative_error(rv, norm.running_var, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_se_layers_run_in_float32_under_autocast(backend):
    """Under autocast (here the CPU's, bf16) the op still computes in float32, the SE block's layers included (bf16
    layers would miss float32's tolerance by orders of magnitude), and returns the input's dtype."""
    x = _input((2, 40, 5, 6), f32, seed=15)
    p = _parameters(40, 10, seed=15)
    dy = torch.randn(x.shape, device=DEVICE)
    leaves = {name: p[name].clone().requires_grad_(True) for name in LEAVES[1:]}
    x.requires_grad_(True)
    with torch.autocast(DEVICE.type, dtype=bf16):  # (the backward outside it, as autocast's documentation asks)
        out = batch_norm_se(x, None, None, leaves["weight"], leaves["bias"], True, 0.1, 1e-5,
                            *(leaves[name] for name in SE_NAMES), backend=backend)  # fmt: skip
    out.backward(dy)
    expected = _float64(x, dy, p, True)
    assert out.dtype == f32
    assert_close(out, expected["out"], f32, scale=float(expected["out"].abs().max()))
    assert_relative_error(x.grad, expected["input"], 1e-5)
    for name in ("down_weight", "up_weight"):
        assert_relative_error(leaves[name].grad, expected[name], 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "strided-map"])
def test_layouts(layout, backend):
    """channels_last and contiguous inputs give outputs in their layout; a map whose H and W do not merge (a
    transposed one) is copied, its output contiguous."""
    x = _input((2, 40, 5, 6), f32, seed=3)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided-map":
        x = x.transpose(2, 3)
    dy = torch.randn(x.shape, device=DEVICE)
    actual = _check(x, dy, _parameters(40, 10, seed=3), backend, True)
    if backend == "triton":  # (autograd gives a leaf's gradient the leaf's strides)
        kept = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert actual["out"].is_contiguous(memory_format=kept)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training,momentum,eps", [(True, 1.0, 1e-3), (True, 0.0, 1e-5), (False, 0.1, 0.5)], ids=str)
def test_momentum_and_eps(training, momentum, eps, backend):
    x = _input((2, 24, 4, 3), f32, seed=4)
    _check(x, torch.randn(x.shape, device=DEVICE), _parameters(24, 6, seed=4), backend, training, momentum, eps)


def test_triton_is_deterministic_and_leaves_the_tickets_at_zero():
    """Two training runs, forward and backward, are bitwise equal (the ticketed reductions add in a fixed order),
    and every ticket counter is back at zero."""
    x = _input((3, 48, 3, 5), bf16, seed=5)
    p = _parameters(48, 12, seed=5)
    dy = torch.randn(x.shape, device=DEVICE).to(bf16)
    first = _run(x, dy, _copies(p), "triton", True)
    assert torch.count_nonzero(ticket_counters(x.device, 3)) == 0
    second = _run(x, dy, _copies(p), "triton", True)
    assert torch.count_nonzero(ticket_counters(x.device, 3)) == 0
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_clear_errors(backend):
    x = torch.randn(2, 16, 3, 3, device=DEVICE)
    p = _parameters(16, 4)
    rm, rv, w, b, dw, db, uw, ub = p.values()

    def call(*args):
        return batch_norm_se(*args, backend=backend)

    with pytest.raises(ValueError, match=r"input must be \[N, C, H, W\]"):
        call(x[0], rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw, ub)
    with pytest.raises(ValueError, match="a non-empty map"):
        call(x[:, :, :0], rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw, ub)
    with pytest.raises(ValueError, match=r"down_weight must be \[R, C\] with R >= 1 and C = 16"):
        call(x, rm, rv, w, b, True, 0.1, 1e-5, dw[:, :8], db, uw, ub)
    with pytest.raises(ValueError, match=r"down_weight must be \[R, C\]"):
        call(x, rm, rv, w, b, True, 0.1, 1e-5, dw[:, :, None, None], db, uw, ub)
    with pytest.raises(ValueError, match=r"up_weight must be \[C, R\] = \[16, 4\]"):
        call(x, rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw.t(), ub)
    with pytest.raises(ValueError, match="down_bias must hold R = 4 values"):
        call(x, rm, rv, w, b, True, 0.1, 1e-5, dw, ub, uw, ub)
    with pytest.raises(ValueError, match="up_bias must hold C = 16 values"):
        call(x, rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw, db)
    with pytest.raises(TypeError, match="up_weight must be a floating-point"):
        call(x, rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw.long(), ub)
    with pytest.raises(ValueError, match="weight and bias must both be"):
        call(x, rm, rv, w, None, True, 0.1, 1e-5, dw, db, uw, ub)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        call(x, rm, rv, w, b, True, 1.5, 1e-5, dw, db, uw, ub)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        call(x[:1, :, :1, :1], rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw, ub)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        call(x.tolist(), rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw, ub)
    assert torch.equal(rm, _parameters(16, 4)["running_mean"])  # no failed call stepped the running statistics


def test_triton_rejects_what_its_kernels_do_not_take():
    x = torch.randn(2, 16, 3, 3, device=DEVICE)
    rm, rv, w, b, dw, db, uw, ub = _parameters(16, 4).values()
    with pytest.raises(TypeError, match="the Triton batch-norm \\+ SE kernels take input in"):
        batch_norm_se(x.double(), rm, rv, w, b, True, 0.1, 1e-5, dw, db, uw, ub, backend="triton")
    with pytest.raises(TypeError, match="the Triton batch-norm \\+ SE kernels take SE parameters in"):
        batch_norm_se(x, rm, rv, w, b, True, 0.1, 1e-5, dw.double(), db, uw, ub, backend="triton")
    with pytest.raises(ValueError, match="at most 65535 samples a call, got 65536"):
        batch_norm_se(torch.zeros(65536, 16, 1, 1, device=DEVICE), rm, rv, w, b, False, 0.1, 1e-5, dw, db, uw, ub,
                      backend="triton")  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_batch_in_eval(backend):
    """No samples: an empty result and input gradient, zero parameter gradients, the running statistics untouched."""
    p = _parameters(16, 4, seed=8)
    leaves = {name: p[name].clone().requires_grad_(True) for name in LEAVES[1:]}
    x = torch.zeros(0, 16, 3, 3, device=DEVICE, requires_grad=True)
    rm, rv = p["running_mean"].clone(), p["running_var"].clone()
    out = batch_norm_se(x, rm, rv, leaves["weight"], leaves["bias"], False, 0.1, 1e-5,
                        *(leaves[name] for name in SE_NAMES), backend=backend)  # fmt: skip
    assert out.shape == x.shape and out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.shape == x.shape
    for name, leaf in leaves.items():
        assert leaf.grad.shape == p[name].shape and not leaf.grad.any(), name
    assert torch.equal(rm, p["running_mean"]) and torch.equal(rv, p["running_var"])


def test_the_public_backward_checks_its_inputs():
    x = torch.randn(2, 16, 3, 3, device=DEVICE)
    p = _parameters(16, 4)
    _out, stats, sample_stats, hidden, logit = batch_norm_se_forward(x, None, None, p["weight"], p["bias"], True, 0.1,
                                                                     1e-5, *(p[n] for n in SE_NAMES))  # fmt: skip
    dy = torch.randn_like(x)
    saved = [stats, sample_stats, hidden, logit]
    rest = (p["weight"], p["bias"], p["down_weight"], p["up_weight"], True)
    for index, name in enumerate(("stats", "sample_stats", "hidden", "logit")):
        for bad in (saved[index][:1], saved[index].double()):
            args = saved[:index] + [bad] + saved[index + 1 :]
            with pytest.raises(ValueError, match=f"{name} must be the forward's float32"):
                batch_norm_se_backward(dy, x, *args, *rest)
    with pytest.raises(ValueError, match="grad_output must be a floating-point tensor of the shape of input"):
        batch_norm_se_backward(dy[:, :8], x, *saved, *rest)
    with pytest.raises(ValueError, match="weight must hold C = 16 values"):
        batch_norm_se_backward(dy, x, *saved, p["weight"][:8], *rest[1:])
    dx, norm_grads, *se_grads = batch_norm_se_backward(dy, x, *saved, *rest)
    assert dx.shape == x.shape and norm_grads.shape == (2, 16)
    assert [tuple(g.shape) for g in se_grads] == [(4, 16), (4,), (16, 4), (16,)]


def _op_args(training: bool, running: bool, seed: int = 9):
    """Arguments of torch.ops.zoo.batch_norm_se: a map of 3 positions (one partial tile) and 20 channels (a masked
    channel block), the input and parameters leaves that require grad."""
    x = _input((2, 20, 1, 3), f32, seed=seed).requires_grad_(True)
    p = _parameters(20, 5, running=running, seed=seed)
    for name in LEAVES[1:]:
        p[name].requires_grad_(True)
    return (x, p["running_mean"], p["running_var"], p["weight"], p["bias"], training, 0.1, 1e-5,
            *(p[name] for name in SE_NAMES))  # fmt: skip


@pytest.mark.parametrize("training,running", [(True, True), (True, False), (False, True)], ids=str)
def test_opcheck_forward_and_backward(training, running):
    """opcheck on the registered ops (which may not write to their inputs: in training with running statistics the
    forward returns their step, [2, C], checked against float64; else [0, C])."""
    args = _op_args(training, running)
    running_mean = None if args[1] is None else args[1].clone()
    torch.library.opcheck(torch.ops.zoo.batch_norm_se.default, args)
    out, stats, sample_stats, hidden, logit, steps = torch.ops.zoo.batch_norm_se(*args)
    assert steps.shape == (2 if training and running else 0, 20)
    if running:
        assert torch.equal(args[1], running_mean)  # not written
    if training and running:
        var, mean = torch.var_mean(args[0].detach().double(), dim=(0, 2, 3), correction=1)
        assert_relative_error(steps[0], 0.9 * args[1].double() + 0.1 * mean, 1e-6)
        assert_relative_error(steps[1], 0.9 * args[2].double() + 0.1 * var, 1e-6)
    x, _rm, _rv, weight, bias, *_rest = args
    backward_args = (torch.randn_like(out), x.detach(), stats, sample_stats, hidden, logit, weight.detach(),
                     bias.detach(), args[8].detach(), args[10].detach(), training)  # fmt: skip
    torch.library.opcheck(torch.ops.zoo.batch_norm_se_backward.default, backward_args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """A compiled function calling the op (the registered op on Triton) gives eager's output, gradients and running
    statistics' step."""
    args = _op_args(True, True, seed=10)
    dy = torch.randn_like(args[0])
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def fn(*a):
        a = list(a)
        a[0] = a[0] * 2.0
        return batch_norm_se(*a, backend=backend) + 1.0

    def fresh():
        return [a.detach().clone().requires_grad_(a.requires_grad) if i in tensors else a for i, a in enumerate(args)]

    eager_args, compiled_args = fresh(), fresh()
    eager = fn(*eager_args)
    eager.backward(dy)
    compiled = torch.compile(fn, fullgraph=True)(*compiled_args)
    compiled.backward(dy)
    assert_close(compiled, eager, f32, scale=float(eager.detach().abs().max()))
    for i in tensors:
        e, c = eager_args[i], compiled_args[i]
        if e.requires_grad:
            assert_relative_error(c.grad, e.grad, 1e-5)
        else:  # the running statistics: the same step
            assert not torch.equal(e, args[i])
            assert_relative_error(c, e, 1e-6)


GPU_BLOCK_C = (256, 128, 64, 32, 16)  # the compiled kernels' choices of BLOCK_C, tiles of 2048 elements


def test_the_compiled_kernels_tiles_on_the_interpreter(monkeypatch):
    """The tiles a GPU launch takes (2048 elements: 32 x 64 with a masked channel block and walks over the samples
    eight at a time), through the interpreter against float64, in training."""
    import zoo.kernels._sample_tiles as tiles

    chosen = []

    def gpu_blocks(channels, positions):
        chosen.append(blocks(channels, positions, GPU_BLOCK_C, 2048))
        return chosen[-1]

    monkeypatch.setattr(tiles, "blocks", gpu_blocks)
    x = _input((9, 40, 7, 7), bf16, seed=11)
    _check(x, torch.randn(x.shape, device=DEVICE).to(bf16), _parameters(40, 10, seed=11), "triton", True)
    assert chosen and all(block[:2] == (32, 64) for block in chosen)


UNIREPLKNET_T_STAGES = ((56, 80), (28, 160), (14, 320), (7, 640))  # (side, channels) of UniRepLKNet-T's blocks


@pytest.mark.gpu
@pytest.mark.parametrize("side,channels", UNIREPLKNET_T_STAGES, ids=str)
def test_gpu_stages_match_float64(side, channels):
    """UniRepLKNet-T's four stages as under bf16 autocast (the depthwise convolution's output bf16), channels_last,
    training, compiled kernels, batch 16."""
    shape = (16, channels, side, side)
    x = _input(shape, bf16, seed=12).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, device=DEVICE).to(bf16).contiguous(memory_format=torch.channels_last)
    actual = _check(x, dy, _parameters(channels, channels // 4, seed=12), "triton", True)
    assert actual["out"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gpu_masked_channels_and_eval_match_float64(training):
    """The compiled kernels with a masked channel block (40 channels in blocks of 64) and the eval forward (the
    running statistics read by the last program), batch 16."""
    shape = (16, 40, 14, 14)
    x = _input(shape, bf16, seed=14).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, device=DEVICE).to(bf16).contiguous(memory_format=torch.channels_last)
    _check(x, dy, _parameters(40, 10, seed=14), "triton", training)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_reentrant_checkpointing(backend):
    """The backward unpacks its saved tensors once, as non-reentrant activation checkpointing (timm's
    ``checkpoint_seq``) requires: the checkpointed call's gradients equal the plain call's."""
    from torch.utils.checkpoint import checkpoint

    x = _input((2, 24, 4, 5), f32, seed=13)
    p = _parameters(24, 6, seed=13)
    results = []
    for checkpointed in (False, True):
        leaves = [t.detach().clone().requires_grad_() for t in (x, p["weight"], p["down_weight"], p["up_weight"])]

        def call(x, weight, down_weight, up_weight):
            return batch_norm_se(x, None, None, weight, p["bias"], True, 0.1, 1e-5, down_weight, p["down_bias"],
                                 up_weight, p["up_bias"], backend=backend)  # fmt: skip

        out = checkpoint(call, *leaves, use_reentrant=False) if checkpointed else call(*leaves)
        results.append(torch.autograd.grad(out.square().sum(), leaves))
    for plain, checkpointed in zip(*results, strict=True):
        assert_close(checkpointed, plain, torch.float32)
