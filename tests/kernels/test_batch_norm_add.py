"""zoo::batch_norm_add: both backends (the Triton kernels through the interpreter on CPU) against an independent
float64 computation (``F.batch_norm`` in float64), the reference against UniRepLKNet's modules, layouts, the
running statistics, the registered ops under opcheck and torch.compile, and bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath

from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels._backend import ticket_counters
from zoo.kernels._sample_tiles import blocks
from zoo.kernels.batch_norm_add import (
    batch_norm_add,
    batch_norm_add_backward,
    batch_norm_add_forward,
)

BACKENDS = ["torch", "triton"]
f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16

# (shape, input dtype, residual dtype, scale dtype (None: no scale), affine, sample_scale, running statistics, the
# input's mean). On the interpreter a tile is 16 channels x 4 positions and a sample's map splits into chunks until
# the grid has about 24 programs: [2, 40, 5, 7] has three channel blocks (the last half masked) and three chunks of
# three tiles (the last one partial); [2, 24, 5, 7] five chunks of two tiles (the last partial); [2, 40, 3, 5] four
# chunks of one tile (the last partial); [1, 24, 9, 4] nine chunks of one whole tile; [3, 16, 1, 1] one position (a
# partial tile); [2, 48, 3, 4] three whole channel blocks; [2, 16, 3, 3] one block, three chunks. A mean of 5
# (standard deviation 0.1) checks the variance's precision.
CASES = [
    ((2, 40, 5, 7), f32, f32, f32, True, True, True, 0.0),
    ((2, 24, 5, 7), bf16, f32, f32, True, True, True, 0.0),  # autocast: the BN's input bf16, the residual float32
    ((2, 40, 3, 5), f16, f16, f16, True, False, True, 0.0),  # everything float16: a float16 result
    ((1, 24, 9, 4), bf16, bf16, None, False, True, True, 5.0),  # a bfloat16 result
    ((3, 16, 1, 1), f32, f32, f32, False, False, True, 0.0),
    ((2, 48, 3, 4), f32, f32, None, True, False, False, 5.0),  # no running statistics: training only
    ((2, 16, 3, 3), f32, bf16, f16, False, True, True, 0.0),  # a bfloat16 residual, a float32 result
]


def _case_id(case) -> str:
    shape, dtype, residual_dtype, scale_dtype, affine, sample_scale, running, mean = case
    names = {f32: "f32", bf16: "bf16", f16: "f16", None: "none"}
    return (
        f"{'x'.join(map(str, shape))}-{names[dtype]}-res_{names[residual_dtype]}-scale_{names[scale_dtype]}"
        f"{'-affine' if affine else ''}{'-sample' if sample_scale else ''}{'-running' if running else ''}-mean{mean:g}"
    )


def _vectors(
    batch: int,
    channels: int,
    affine: bool = True,
    scale_dtype: torch.dtype | None = torch.float32,
    sample_scale: bool = True,
    running: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """The op's channel and sample vectors (None where absent): non-trivial running statistics, affine terms, a layer
    scale, and a stochastic-depth mask over its keep probability 0.8 (the first of several samples dropped)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.full((batch,), 1.25)
    if batch > 1:
        mask[0] = 0.0
    vectors = dict(
        running_mean=0.3 * torch.randn(channels, generator=gen) if running else None,
        running_var=0.5 + torch.rand(channels, generator=gen) if running else None,
        weight=1.0 + 0.3 * torch.randn(channels, generator=gen) if affine else None,
        bias=0.2 * torch.randn(channels, generator=gen) if affine else None,
        scale=(0.5 * torch.randn(channels, generator=gen)).to(scale_dtype) if scale_dtype is not None else None,
        sample_scale=mask if sample_scale else None,
    )
    return {name: None if t is None else t.to(DEVICE) for name, t in vectors.items()}


def _inputs(shape, dtype, residual_dtype, mean: float = 0.0, seed: int = 0):
    """(input, residual) drawn in float32 and rounded to their dtypes."""
    gen = torch.Generator().manual_seed(seed)
    std = 0.1 if mean else 1.0
    x = mean + std * torch.randn(shape, generator=gen)
    residual = torch.randn(shape, generator=gen)
    return x.to(DEVICE, dtype), residual.to(DEVICE, residual_dtype)


def _result_dtype(input, residual, scale) -> torch.dtype:
    dtype = torch.promote_types(residual.dtype, input.dtype)
    return dtype if scale is None else torch.promote_types(dtype, scale.dtype)


def _run(input, residual, dy, vectors, backend, training, momentum=0.1, eps=1e-5) -> dict:
    """Output, gradients (on fresh leaves, views of the tensors given: their strides) and the running statistics
    after the call. The running statistics in ``vectors`` are updated in place (the caller passes copies)."""
    leaves = {
        name: None if t is None else t.detach().requires_grad_(True)
        for name, t in dict(
            input=input, residual=residual, weight=vectors["weight"], bias=vectors["bias"], scale=vectors["scale"]
        ).items()
    }
    out = batch_norm_add(
        leaves["input"],
        leaves["residual"],
        vectors["running_mean"],
        vectors["running_var"],
        leaves["weight"],
        leaves["bias"],
        training,
        momentum,
        eps,
        leaves["scale"],
        vectors["sample_scale"],
        backend=backend,
    )
    out.backward(dy)
    results = {name: None if t is None else t.grad for name, t in leaves.items()}
    results.update(out=out.detach(), running_mean=vectors["running_mean"], running_var=vectors["running_var"])
    return results


def _float64(input, residual, dy, vectors, training, momentum=0.1, eps=1e-5) -> dict:
    """The same in float64 with ``F.batch_norm`` and autograd, independent of the op."""
    leaves = {
        name: None if t is None else t.detach().double().requires_grad_(True)
        for name, t in dict(
            input=input, residual=residual, weight=vectors["weight"], bias=vectors["bias"], scale=vectors["scale"]
        ).items()
    }
    running_mean, running_var, sample_scale = (
        None if vectors[name] is None else vectors[name].double().clone()
        for name in ("running_mean", "running_var", "sample_scale")
    )
    z = F.batch_norm(
        leaves["input"], running_mean, running_var, leaves["weight"], leaves["bias"], training, momentum, eps
    )
    if leaves["scale"] is not None:
        z = z * leaves["scale"].view(1, -1, 1, 1)
    if sample_scale is not None:
        z = z * sample_scale.view(-1, 1, 1, 1)
    out = leaves["residual"] + z
    out.backward(dy.double())
    results = {name: None if t is None else t.grad for name, t in leaves.items()}
    results.update(out=out.detach(), running_mean=running_mean, running_var=running_var)
    return results


def _copies(vectors: dict) -> dict:
    return {name: None if t is None else t.clone() for name, t in vectors.items()}


def _check(input, residual, dy, vectors, backend, training, momentum=0.1, eps=1e-5) -> dict:
    """The op on ``backend`` against :func:`_float64`: the output and the input's gradient to the rounding of their
    dtypes, the residual's gradient (the output gradient itself), the parameters' gradients and the running
    statistics (float32 sums) to 1e-5 relative (float16 / bfloat16 parameters: their rounding)."""
    actual = _run(input, residual, dy, _copies(vectors), backend, training, momentum, eps)
    expected = _float64(input, residual, dy, vectors, training, momentum, eps)
    out = actual["out"]
    assert out.dtype == _result_dtype(input, residual, vectors["scale"]) and out.shape == input.shape
    assert_close(out, expected["out"], out.dtype, scale=float(expected["out"].abs().max().clamp_min(1.0)))
    for name, like in (("input", input), ("residual", residual)):
        grad = actual[name]
        assert grad.dtype == like.dtype and grad.shape == like.shape
        assert_close(grad, expected[name], like.dtype, scale=float(expected[name].abs().max().clamp_min(1.0)))
    for name in ("weight", "bias", "scale"):
        parameter = vectors[name]
        if parameter is None:
            assert actual[name] is None
            continue
        assert actual[name].dtype == parameter.dtype and actual[name].shape == parameter.shape
        assert_relative_error(actual[name], expected[name], max(1e-5, torch.finfo(parameter.dtype).eps))
    for name in ("running_mean", "running_var"):
        if vectors[name] is None:
            continue
        assert actual[name].dtype == vectors[name].dtype
        if training and momentum > 0:
            assert not torch.equal(actual[name], vectors[name])  # the step was taken
        assert_relative_error(actual[name], expected[name], 1e-5)
    return actual


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case, training",
    [(case, training) for case in CASES for training in (True, False) if training or case[6]],  # eval needs running
    ids=lambda v: {True: "train", False: "eval"}[v] if isinstance(v, bool) else _case_id(v),
)
def test_forward_gradients_and_running_stats_match_float64(case, training, backend):
    shape, dtype, residual_dtype, scale_dtype, affine, sample_scale, running, mean = case
    x, residual = _inputs(shape, dtype, residual_dtype, mean, seed=1)
    vectors = _vectors(shape[0], shape[1], affine, scale_dtype, sample_scale, running, seed=1)
    dy = torch.randn(shape, device=DEVICE).to(_result_dtype(x, residual, vectors["scale"]))
    _check(x, residual, dy, vectors, backend, training)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,mean", [(f32, 100.0), (bf16, 5.0)], ids=str)
def test_variance_of_a_mean_far_from_zero(dtype, mean, backend):
    """Input ``mean + 0.1 randn`` (at 100 in float32 the mean's square is 1e6 times the variance: a float32 sum of
    squares keeps none of its digits): with momentum 1 the running statistics become the batch's mean and unbiased
    variance, to 1e-6 and 1e-4 relative of float64; on Triton also the forward's statistics, the mean and
    1 / sqrt(var + eps) (the biased variance)."""
    shape = (2, 40, 5, 7)
    gen = torch.Generator().manual_seed(2)
    x = (mean + 0.1 * torch.randn(shape, generator=gen)).to(DEVICE, dtype)
    running_mean, running_var = torch.zeros(40, device=DEVICE), torch.ones(40, device=DEVICE)
    if backend == "triton":  # the launcher, which returns its statistics too
        _out, stats = batch_norm_add_forward(x, x, running_mean, running_var, training=True, momentum=1.0)
    else:
        batch_norm_add(x, x, running_mean, running_var, training=True, momentum=1.0, backend=backend)
    var, expected_mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=1)
    assert_relative_error(running_mean, expected_mean, 1e-6)
    assert_relative_error(running_var, var, 1e-4)
    if backend == "triton":
        assert stats.shape == (2, 40) and stats.dtype == torch.float32
        biased = torch.var(x.double(), dim=(0, 2, 3), correction=0)
        assert_relative_error(stats[0], expected_mean, 1e-6)
        assert_relative_error(stats[1], torch.rsqrt(biased + 1e-5), 1e-4)


def test_training_needs_more_than_one_value_per_channel():
    x = torch.randn(1, 16, 1, 1, device=DEVICE)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            batch_norm_add(x, x.clone(), None, None, training=True, backend=backend)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm(x, None, None, training=True)  # as torch's


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_reference_is_the_modules(training, backend):
    """UniRepLKNet's block tail ``x + DropPath(gamma * BN(y))`` (nn.BatchNorm2d, timm's DropPath) in float32: the
    op with the layer's buffers and parameters gives its output, gradients and running statistics, and leaves
    num_batches_tracked (the layer's own count) alone."""
    torch.manual_seed(3)
    shape = (4, 24, 3, 3)
    bn = torch.nn.BatchNorm2d(24).to(DEVICE)
    with torch.no_grad():
        bn.weight.copy_(1.0 + 0.3 * torch.randn(24))
        bn.bias.copy_(0.2 * torch.randn(24))
        bn.running_mean.copy_(0.3 * torch.randn(24))
        bn.running_var.copy_(0.5 + torch.rand(24))
    gamma = torch.nn.Parameter(0.5 * torch.randn(24, device=DEVICE))
    drop = DropPath(0.5)
    bn.train(training)
    drop.train(training)
    twin, twin_gamma = copy.deepcopy(bn), copy.deepcopy(gamma)
    y = torch.randn(shape, device=DEVICE, requires_grad=True)
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    y2, x2 = (t.detach().clone().requires_grad_(True) for t in (y, x))
    dy = torch.randn(shape, device=DEVICE)

    torch.manual_seed(30)
    expected = x + drop(gamma.view(1, -1, 1, 1) * bn(y))
    expected.backward(dy)
    torch.manual_seed(30)  # the same draw: DropPath's mask over its keep probability
    sample_scale = drop(torch.ones(4, 1, 1, 1, device=DEVICE)).view(4) if training else None
    if training:
        assert 0.0 in sample_scale and 2.0 in sample_scale  # the mask drops a sample and scales another
    out = batch_norm_add(
        y2, x2, twin.running_mean, twin.running_var, twin.weight, twin.bias, training, twin.momentum, twin.eps,
        twin_gamma, sample_scale, backend=backend,
    )  # fmt: skip
    out.backward(dy)

    assert_close(out, expected, torch.float32, scale=float(expected.detach().abs().max()))
    assert_close(y2.grad, y.grad, torch.float32, scale=float(y.grad.abs().max()))
    assert torch.equal(x2.grad, x.grad)
    for actual, reference in ((twin.weight, bn.weight), (twin.bias, bn.bias), (twin_gamma, gamma)):
        assert_relative_error(actual.grad, reference.grad, 1e-5)
    for name in ("running_mean", "running_var"):
        assert_relative_error(getattr(twin, name), getattr(bn, name), 1e-6)
    assert int(bn.num_batches_tracked) == (1 if training else 0)
    assert int(twin.num_batches_tracked) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "sliced-residual", "strided-map"])
def test_layouts_and_strided_running_stats(layout, backend):
    """Input and residual channels_last or contiguous NCHW, a residual sliced from a wider tensor (not dense: the
    result is contiguous NCHW), an input whose map does not merge into one stride and an expanded output gradient
    (stride 0); the running statistics are every second element of a buffer, and their step lands there. The result
    takes the residual's layout, the input gradient (Triton) the input's."""
    torch.manual_seed(4)
    shape = (2, 24, 4, 5)
    x, residual = _inputs(shape, f32, f32, seed=4)
    dy = torch.randn(shape, device=DEVICE)
    if layout == "channels_last":
        x, residual = (t.contiguous(memory_format=torch.channels_last) for t in (x, residual))
    elif layout == "sliced-residual":
        x = x.contiguous(memory_format=torch.channels_last)
        wide = torch.randn(2, 48, 4, 5, device=DEVICE)
        wide[:, 8:32] = residual
        residual = wide[:, 8:32]
    elif layout == "strided-map":
        wide = torch.randn(2, 24, 4, 10, device=DEVICE)
        wide[..., ::2] = x
        x = wide[..., ::2]
        residual = residual.contiguous(memory_format=torch.channels_last)
        dy = torch.randn(1, 1, 1, 1, device=DEVICE).expand(shape)
    vectors = _vectors(2, 24, seed=4)
    buffers = {}
    for name in ("running_mean", "running_var"):
        buffers[name] = torch.full((48,), -7.0, device=DEVICE)
        buffers[name][::2] = vectors[name]
        vectors[name] = buffers[name][::2]
    expected = _float64(x, residual, dy, vectors, True)
    actual = _run(x, residual, dy, vectors, backend, True)
    assert_close(actual["out"], expected["out"], f32, scale=float(expected["out"].abs().max()))
    assert_close(actual["input"], expected["input"], f32, scale=float(expected["input"].abs().max()))
    for name in ("weight", "bias", "scale"):
        assert_relative_error(actual[name], expected[name], 1e-5)
    for name, buffer in buffers.items():
        assert actual[name].data_ptr() == buffer.data_ptr()
        assert_relative_error(buffer[::2], expected[name], 1e-5)
        assert torch.equal(buffer[1::2], torch.full((24,), -7.0, device=DEVICE))
    residual_layout = torch.channels_last if layout in ("channels_last", "strided-map") else torch.contiguous_format
    assert actual["out"].is_contiguous(memory_format=residual_layout)
    if backend == "triton" and layout != "strided-map":
        input_layout = torch.contiguous_format if layout == "nchw" else torch.channels_last
        assert actual["input"].is_contiguous(memory_format=input_layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "training,momentum,eps", [(True, 0.0, 1e-5), (True, 1.0, 1e-3), (True, 0.3, 2.0), (False, 0.1, 0.5)], ids=str
)
def test_momentum_and_eps(training, momentum, eps, backend):
    """Momentum 0 leaves the running statistics as they were (bitwise), 1 replaces them by the batch's; eps large
    enough to matter, in training and in eval (where it is added to the running variance)."""
    shape = (2, 24, 3, 3)
    x, residual = _inputs(shape, f32, f32, seed=5)
    vectors = _vectors(2, 24, seed=5)
    dy = torch.randn(shape, device=DEVICE)
    actual = _check(x, residual, dy, vectors, backend, training, momentum, eps)
    if momentum == 0.0 or not training:
        assert torch.equal(actual["running_mean"], vectors["running_mean"])
        assert torch.equal(actual["running_var"], vectors["running_var"])


def test_triton_is_deterministic_and_leaves_the_tickets_at_zero():
    """Two training runs, forward and backward, are bitwise equal (the ticketed reductions add in a fixed order),
    and every ticket counter is back at zero."""
    shape = (3, 48, 3, 5)
    x, residual = _inputs(shape, bf16, f32, seed=6)
    vectors = _vectors(3, 48, seed=6)
    dy = torch.randn(shape, device=DEVICE)
    first = _run(x, residual, dy, _copies(vectors), "triton", True)
    assert torch.count_nonzero(ticket_counters(x.device, 3)) == 0
    second = _run(x, residual, dy, _copies(vectors), "triton", True)
    assert torch.count_nonzero(ticket_counters(x.device, 3)) == 0
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_clear_errors(backend):
    x = torch.randn(2, 16, 3, 3, device=DEVICE)
    r = torch.randn(2, 16, 3, 3, device=DEVICE)
    v = _vectors(2, 16)
    rm, rv, w, b, s, ss = (v[k] for k in ("running_mean", "running_var", "weight", "bias", "scale", "sample_scale"))

    def call(*args, **kwargs):
        return batch_norm_add(*args, **kwargs, backend=backend)

    with pytest.raises(ValueError, match=r"input must be \[N, C, H, W\]"):
        call(x[0], r[0], rm, rv)
    with pytest.raises(ValueError, match="residual must have the shape and device of input"):
        call(x, r[:, :8], rm, rv)
    with pytest.raises(ValueError, match="running_mean and running_var must both be"):
        call(x, r, rm, None, training=True)
    with pytest.raises(ValueError, match="weight and bias must both be"):
        call(x, r, rm, rv, w, None)
    with pytest.raises(ValueError, match="scale must hold C = 16 values"):
        call(x, r, rm, rv, w, b, scale=s[:15])
    with pytest.raises(ValueError, match="running_var must hold C = 16 values"):
        call(x, r, rm, torch.ones(17, device=DEVICE))
    with pytest.raises(ValueError, match="sample_scale must hold"):
        call(x, r, rm, rv, sample_scale=torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match="needed when training=False"):
        call(x, r, None, None, training=False)
    for momentum in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
            call(x, r, rm, rv, training=True, momentum=momentum)
    for eps in (0.0, -1e-5):
        with pytest.raises(ValueError, match="eps must be a positive number"):
            call(x, r, rm, rv, eps=eps)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        call(x[:1, :, :1, :1], r[:1, :, :1, :1], rm, rv, training=True)
    with pytest.raises(TypeError, match="input must be a floating-point"):
        call(x.long(), r, rm, rv)
    with pytest.raises(TypeError, match="residual must be a floating-point"):
        call(x, r.int(), rm, rv)
    with pytest.raises(TypeError, match="weight must be a floating-point"):
        call(x, r, rm, rv, w.long(), b)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        call(x.tolist(), r, rm, rv)
    with pytest.raises(TypeError, match="training must be a bool"):
        call(x, r, rm, rv, w, b, 1)
    assert torch.equal(rm, _vectors(2, 16)["running_mean"])  # no failed call stepped the running statistics


def test_triton_rejects_what_its_kernels_do_not_take():
    x = torch.randn(2, 16, 3, 3, device=DEVICE)
    v = _vectors(2, 16)
    rm, rv = v["running_mean"], v["running_var"]
    with pytest.raises(TypeError, match="the Triton batch-norm \\+ add kernels take input in"):
        batch_norm_add(x.double(), x, rm, rv, backend="triton")
    with pytest.raises(TypeError, match="the Triton batch-norm \\+ add kernels take residual in"):
        batch_norm_add(x, x.double(), rm, rv, backend="triton")
    with pytest.raises(TypeError, match="the Triton batch-norm \\+ add kernels write"):
        batch_norm_add(x, x, rm, rv, scale=torch.ones(16, dtype=torch.float64, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="at most 65535 samples a call, got 65536"):
        batch_norm_add(torch.zeros(65536, 16, 1, 1, device=DEVICE), torch.zeros(65536, 16, 1, 1, device=DEVICE), rm, rv,
                       backend="triton")  # fmt: skip
    # float64 is the reference's (the float64 computation itself, to its rounding)
    xd = x.double()
    expected = F.batch_norm(xd, rm.double(), rv.double()) + xd
    torch.testing.assert_close(batch_norm_add(xd, xd, rm, rv, backend="torch"), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 16, 3, 3), (2, 0, 3, 3), (2, 16, 0, 3)], ids=str)
def test_empty_input_in_eval(shape, backend):
    """No samples, no channels or no positions: empty results and gradients, zero parameter gradients, the running
    statistics untouched."""
    channels = shape[1]
    v = _vectors(shape[0], channels, sample_scale=False, seed=8)
    leaves = [v[name].clone().requires_grad_(True) for name in ("weight", "bias", "scale")]
    x = torch.zeros(shape, device=DEVICE, requires_grad=True)
    residual = torch.zeros(shape, device=DEVICE, requires_grad=True)
    running_mean, running_var = v["running_mean"].clone(), v["running_var"].clone()
    out = batch_norm_add(x, residual, running_mean, running_var, *leaves[:2], False, scale=leaves[2], backend=backend)
    assert out.shape == shape and out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.shape == shape and residual.grad.shape == shape
    for leaf in leaves:
        assert leaf.grad.shape == (channels,) and not leaf.grad.any()
    assert torch.equal(running_mean, v["running_mean"]) and torch.equal(running_var, v["running_var"])


def test_the_public_backward_checks_its_inputs():
    x = torch.randn(2, 16, 3, 3, device=DEVICE)
    v = _vectors(2, 16)
    _out, stats = batch_norm_add_forward(x, x, None, None, v["weight"], v["bias"], True)
    dy = torch.randn_like(x)
    args = (v["weight"], v["bias"], None, None, True)
    for bad in (stats[:1], torch.zeros(3, 16, device=DEVICE), torch.zeros(2, 17, device=DEVICE), stats.double()):
        with pytest.raises(ValueError, match=r"stats must be the forward's float32 \[2, 16\]"):
            batch_norm_add_backward(dy, x, bad, *args)
    with pytest.raises(ValueError, match="grad_output must be a floating-point tensor of the shape of input"):
        batch_norm_add_backward(dy[:, :8], x, stats, *args)
    with pytest.raises(ValueError, match="weight must hold C = 16 values"):
        batch_norm_add_backward(dy, x, stats, v["weight"][:8], *args[1:])
    # the public backward is the float64 computation's gradient (the forward's statistics; eval and training)
    for training in (True, False):
        leaf = x.double().requires_grad_(True)
        weight, bias = (v[name].double().requires_grad_(True) for name in ("weight", "bias"))
        rm, rv = v["running_mean"].double(), v["running_var"].double()
        y = F.batch_norm(leaf, rm.clone(), rv.clone(), weight, bias, training)
        y.backward(dy.double())
        if not training:
            _out, stats = batch_norm_add_forward(x, x, v["running_mean"], v["running_var"], v["weight"], v["bias"])
        dx, grads = batch_norm_add_backward(dy, x, stats, v["weight"], v["bias"], None, None, training)
        assert dx.dtype == torch.float32 and grads.shape == (3, 16) and grads.dtype == torch.float32
        assert_close(dx, leaf.grad, f32, scale=float(leaf.grad.abs().max()))
        assert_relative_error(grads[0], weight.grad, 1e-5)
        assert_relative_error(grads[1], bias.grad, 1e-5)
        # the absent scale's gradient: what it would be at 1, sum of dy * bn(x)
        assert_relative_error(grads[2], (dy.double() * y.detach()).sum(dim=(0, 2, 3)), 1e-5)


def _op_args(training: bool, running: bool, seed: int = 9):
    """Arguments of torch.ops.zoo.batch_norm_add: a map of 3 positions (one partial tile) and 20 channels (a masked
    channel block), the inputs and parameters leaves that require grad."""
    shape = (2, 20, 1, 3)
    x, residual = _inputs(shape, f32, f32, seed=seed)
    v = _vectors(2, 20, running=running, seed=seed)
    leaves = [t.requires_grad_(True) for t in (x, residual, v["weight"], v["bias"], v["scale"])]
    x, residual, weight, bias, scale = leaves
    return (x, residual, v["running_mean"], v["running_var"], weight, bias, training, 0.1, 1e-5, scale,
            v["sample_scale"])  # fmt: skip


@pytest.mark.parametrize("training,running", [(True, True), (True, False), (False, True)], ids=str)
def test_opcheck_forward_and_backward(training, running):
    """opcheck on the registered ops (which may not write to their inputs: in training with running statistics the
    forward returns their step, [2, C], checked against float64; else [0, C])."""
    args = _op_args(training, running)
    running_mean = None if args[2] is None else args[2].clone()
    torch.library.opcheck(torch.ops.zoo.batch_norm_add.default, args)
    out, stats, steps = torch.ops.zoo.batch_norm_add(*args)
    assert stats.shape == (2, 20) and steps.shape == (2 if training and running else 0, 20)
    if running:
        assert torch.equal(args[2], running_mean)  # not written
    if training and running:
        x = args[0].detach().double()
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
        assert_relative_error(steps[0], 0.9 * args[2].double() + 0.1 * mean, 1e-6)
        assert_relative_error(steps[1], 0.9 * args[3].double() + 0.1 * var, 1e-6)
    x, _residual, _rm, _rv, weight, bias, _training, _m, _e, scale, sample_scale = args
    dy = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.zoo.batch_norm_add_backward.default,
        (dy, x.detach(), stats.detach(), weight.detach(), bias.detach(), scale.detach(), sample_scale, training),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """A compiled function calling the op (the registered op on Triton) gives eager's output, gradients and running
    statistics' step."""
    args = _op_args(True, True, seed=10)
    x, residual, running_mean, running_var, weight, bias, _t, _m, _e, scale, sample_scale = args
    dy = torch.randn_like(x)

    def fn(x, residual, running_mean, running_var, weight, bias, scale):
        return batch_norm_add(
            x * 2.0, residual, running_mean, running_var, weight, bias, True, 0.2, 1e-4, scale, sample_scale,
            backend=backend,
        ) + 1.0  # fmt: skip

    def fresh():
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, residual, weight, bias, scale)]
        return leaves, running_mean.clone(), running_var.clone()

    (e_x, e_res, e_w, e_b, e_s), e_rm, e_rv = fresh()
    eager = fn(e_x, e_res, e_rm, e_rv, e_w, e_b, e_s)
    eager.backward(dy)
    (c_x, c_res, c_w, c_b, c_s), c_rm, c_rv = fresh()
    compiled = torch.compile(fn, fullgraph=True)(c_x, c_res, c_rm, c_rv, c_w, c_b, c_s)
    compiled.backward(dy)
    assert_close(compiled, eager, f32, scale=float(eager.detach().abs().max()))
    assert_close(c_x.grad, e_x.grad, f32, scale=float(e_x.grad.abs().max()))
    assert torch.equal(c_res.grad, e_res.grad)
    for c, e in ((c_w, e_w), (c_b, e_b), (c_s, e_s)):
        assert_relative_error(c.grad, e.grad, 1e-5)
    assert not torch.equal(e_rm, running_mean)  # the step was taken
    assert_relative_error(c_rm, e_rm, 1e-6)
    assert_relative_error(c_rv, e_rv, 1e-6)


GPU_BLOCK_C = (256, 128, 64, 32, 16)  # the compiled kernels' choices of BLOCK_C, tiles of 2048 elements


@pytest.mark.parametrize("shape,tile", [((2, 40, 7, 7), (32, 64)), ((1, 256, 3, 3), (8, 256))], ids=str)
def test_the_compiled_kernels_tiles_on_the_interpreter(shape, tile, monkeypatch):
    """The tiles a GPU launch takes (2048 elements: 32 x 64 with a masked channel block, 8 x 256 with a partial
    tile of one row), through the interpreter against float64, in training."""
    import zoo.kernels._sample_tiles as tiles

    chosen = []

    def gpu_blocks(channels, positions):
        chosen.append(blocks(channels, positions, GPU_BLOCK_C, 2048))
        return chosen[-1]

    monkeypatch.setattr(tiles, "blocks", gpu_blocks)
    x, residual = _inputs(shape, bf16, f32, seed=11)
    vectors = _vectors(shape[0], shape[1], seed=11)
    _check(x, residual, torch.randn(shape, device=DEVICE), vectors, "triton", True)
    assert chosen and all(block[:2] == tile for block in chosen)


UNIREPLKNET_T_STAGES = ((56, 80), (28, 160), (14, 320), (7, 640))  # (side, channels) of UniRepLKNet-T's blocks


@pytest.mark.gpu
@pytest.mark.parametrize("side,channels", UNIREPLKNET_T_STAGES, ids=str)
def test_gpu_stages_match_float64(side, channels):
    """UniRepLKNet-T's four stages as under bf16 autocast (the BN's input bf16, the residual float32), channels_last,
    training with the stochastic-depth mask, compiled kernels, batch 16."""
    shape = (16, channels, side, side)
    x, residual = _inputs(shape, bf16, f32, seed=12)
    x, residual = (t.contiguous(memory_format=torch.channels_last) for t in (x, residual))
    vectors = _vectors(16, channels, seed=12)
    dy = torch.randn(shape, device=DEVICE).contiguous(memory_format=torch.channels_last)
    actual = _check(x, residual, dy, vectors, "triton", True)
    assert actual["out"].is_contiguous(memory_format=torch.channels_last)


def test_opcheck_with_a_map_that_does_not_merge():
    """Input and residual whose H and W strides do not merge (a transposed map) are copied to contiguous ones: the
    fake implementations give the outputs the strides the kernels write (opcheck compares them)."""
    torch.manual_seed(12)
    x = torch.randn(2, 20, 5, 3, device=DEVICE).transpose(2, 3)
    residual = torch.randn(2, 20, 5, 3, device=DEVICE).transpose(2, 3)
    vectors = _vectors(2, 20, seed=12)
    args = (x, residual, vectors["running_mean"], vectors["running_var"], vectors["weight"], vectors["bias"], True)
    args += (0.1, 1e-5, vectors["scale"], vectors["sample_scale"])
    torch.library.opcheck(torch.ops.zoo.batch_norm_add.default, args)
    out, stats, _steps = torch.ops.zoo.batch_norm_add(*args)
    assert out.is_contiguous()
    dy = torch.randn(2, 20, 5, 3, device=DEVICE).transpose(2, 3)
    backward_args = (dy, x, stats, vectors["weight"], vectors["bias"], vectors["scale"], vectors["sample_scale"], True)
    torch.library.opcheck(torch.ops.zoo.batch_norm_add_backward.default, backward_args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_reentrant_checkpointing(backend):
    """The backward unpacks its saved tensors once, as non-reentrant activation checkpointing (timm's
    ``checkpoint_seq``) requires: the checkpointed call's gradients equal the plain call's."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(13)
    x, residual = _inputs((2, 24, 4, 5), f32, f32, seed=13)
    vectors = _vectors(2, 24, seed=13)
    results = []
    for checkpointed in (False, True):
        leaves = [t.detach().clone().requires_grad_() for t in (x, residual, vectors["weight"], vectors["scale"])]

        def call(x, residual, weight, scale):
            return batch_norm_add(
                x, residual, None, None, weight, vectors["bias"], True, 0.1, 1e-5, scale, backend=backend
            )

        out = checkpoint(call, *leaves, use_reentrant=False) if checkpointed else call(*leaves)
        results.append(torch.autograd.grad(out.square().sum(), leaves))
    for plain, checkpointed in zip(*results, strict=True):
        assert_close(checkpointed, plain, torch.float32)
