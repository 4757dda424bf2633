"""The fused InceptionNeXt mixer kernels (zoo/kernels/dwconv/_inception.py) against the split / conv / cat
reference in float64: the forward and every gradient, through the launchers the registered ops call (the
interpreter on CPU, compiled on a GPU). The cases cover every compiled path: groups of 8, 4, 2 and 1 channels
(gc and the identity width decide), whole-map strips (maps of at most 8) and strips with borders, several groups
per step, channels_last (vectors) and NCHW / strided views (one element at a time), several chunks in the weight
gradient's final sum."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels.dwconv import _inception
from zoo.kernels.dwconv._inception import inception_dwconv2d_backward, inception_dwconv2d_forward
from zoo.kernels.dwconv.reference import inception_dwconv2d_reference

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _inputs(shape, gc, square, band, dtype, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    params = [
        torch.randn(gc, 1, square, square, generator=gen),
        torch.randn(gc, generator=gen) if bias else None,
        torch.randn(gc, 1, 1, band, generator=gen),
        torch.randn(gc, generator=gen) if bias else None,
        torch.randn(gc, 1, band, 1, generator=gen),
        torch.randn(gc, generator=gen) if bias else None,
    ]
    dy = torch.randn(shape, generator=gen)
    return x.to(DEVICE, dtype), [None if p is None else p.to(DEVICE, dtype) for p in params], dy.to(DEVICE, dtype)


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every second row of a taller channels_last tensor: no unit-stride-friendly view
        tall = torch.zeros(t.shape[0], t.shape[1], 2 * t.shape[2], t.shape[3], dtype=t.dtype, device=t.device)
        tall = tall.contiguous(memory_format=torch.channels_last)
        tall[:, :, ::2] = t
        return tall[:, :, ::2]
    return t.contiguous()


def _reference(x, params, dy):
    """The float64 output and gradients (x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h) of the
    reference at the (rounded) inputs."""
    leaves = [x.double().requires_grad_()] + [None if p is None else p.double().requires_grad_() for p in params]
    y = inception_dwconv2d_reference(*leaves)
    y.backward(dy.double())
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _check(x, params, dy, dtype):
    y = inception_dwconv2d_forward(x, *params)
    grads = inception_dwconv2d_backward(dy, x, params[0], params[2], params[4])
    y64, grads64 = _reference(x, params, dy)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y64, dtype, scale=float(y64.abs().max()))
    dx, weight_grads = grads[0], grads[1:]
    assert dx.dtype == dtype
    assert_close(dx, grads64[0], dtype, scale=float(grads64[0].abs().max()))
    bound = 1e-5 if dtype == torch.float32 else 1e-2  # fp32 sums of products of rounded inputs
    gc = params[0].shape[0]
    for branch, weight in enumerate((params[0], params[2], params[4])):
        dw, db = weight_grads[2 * branch], weight_grads[2 * branch + 1]
        assert dw.dtype == db.dtype == weight.dtype and dw.shape == weight.shape and db.shape == (gc,)
        assert_relative_error(dw, grads64[1 + 2 * branch], bound)
        if params[2 * branch + 1] is None:  # without biases: still the sum of dy over the branch's slice
            first = x.shape[1] - 3 * gc + branch * gc
            assert_relative_error(db, dy.double()[:, first : first + gc].sum((0, 2, 3)), bound)
        else:
            assert_relative_error(db, grads64[2 + 2 * branch], bound)
    return y, grads


# (x shape, gc, square, band, layout): groups of 8 (C 40, gc 8) on a whole 6 x 7 map, two groups per step (gc 16,
# identity 16) and four (gc 32, no identity); groups of 4 (InceptionNeXt-T's gc = C / 8 = 12 at C 96 scaled down: C 20, gc 4) on a map wider and
# taller than 8 (strips with borders); an odd identity width (13 - 3 x 2 = 7: groups of 1); no identity at all
# with an odd gc (groups of 1, three per branch); atto's band 9 with groups of 2 (identity 2, gc 2); square 5
# with band 7 on an odd map narrower than the band.
CASES = [
    ((1, 40, 6, 7), 8, 3, 11, "channels_last"),
    ((2, 64, 5, 6), 16, 3, 7, "nchw"),
    ((1, 96, 4, 5), 32, 3, 7, "channels_last"),
    ((2, 20, 9, 11), 4, 3, 11, "channels_last"),
    ((2, 20, 9, 11), 4, 3, 11, "nchw"),
    ((2, 13, 6, 7), 2, 3, 11, "channels_last"),
    ((1, 9, 10, 9), 3, 5, 7, "channels_last"),
    ((1, 8, 7, 13), 2, 3, 9, "channels_last"),
    ((1, 8, 7, 13), 2, 3, 9, "nchw"),
    ((1, 10, 3, 5), 2, 5, 7, "nchw"),
]


@pytest.mark.parametrize("shape,gc,square,band,layout", CASES, ids=str)
def test_float32_matches_the_float64_reference(shape, gc, square, band, layout):
    x, params, dy = _inputs(shape, gc, square, band, torch.float32)
    x, dy = _layout(x, layout), _layout(dy, layout)
    y, grads = _check(x, params, dy, torch.float32)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous() and grads[0].is_contiguous()


@pytest.mark.parametrize(
    "dtype,layout,shape,gc,square,band",
    [
        (torch.bfloat16, "channels_last", (1, 24, 6, 9), 4, 3, 11),
        # groups of 8 on a map 16 wide: the forward's strips of 8, the weight gradient's of 4 (_wgrad_geometry)
        (torch.bfloat16, "channels_last", (1, 40, 9, 16), 8, 3, 11),
        (torch.bfloat16, "strided", (1, 13, 5, 6), 2, 5, 7),
        (torch.float16, "channels_last", (1, 16, 7, 5), 4, 5, 7),
        (torch.float16, "nchw", (1, 11, 5, 9), 3, 3, 11),
    ],
    ids=str,
)
def test_half_precision_matches_the_float64_reference(dtype, layout, shape, gc, square, band):
    x, params, dy = _inputs(shape, gc, square, band, dtype, seed=1)
    _check(_layout(x, layout), params, _layout(dy, layout), dtype)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_without_biases(layout):
    x, params, dy = _inputs((2, 22, 7, 10), 6, 3, 11, torch.float32, bias=False, seed=2)
    _check(_layout(x, layout), params, _layout(dy, layout), torch.float32)


# (shape, gc), float32 (groups of at most 4): identity 14 in groups of 1 (element path); identity 12 in 3 groups on a
# map wider than a strip, copied 4 groups per step (the fourth masked off); identity 48 in 12 groups, copied 8 per
# step (the second step half masked)
@pytest.mark.parametrize("shape,gc", [((1, 17, 5, 9), 1), ((2, 24, 9, 10), 4), ((1, 72, 3, 11), 8)], ids=str)
def test_identity_slice_is_copied_bit_for_bit(shape, gc):
    x, params, dy = _inputs(shape, gc, 3, 7, torch.float32, seed=3)
    x, dy = _layout(x, "channels_last"), _layout(dy, "channels_last")
    y = inception_dwconv2d_forward(x, *params)
    dx = inception_dwconv2d_backward(dy, x, params[0], params[2], params[4])[0]
    identity = shape[1] - 3 * gc
    assert torch.equal(y[:, :identity], x[:, :identity])
    assert torch.equal(dx[:, :identity], dy[:, :identity])


def test_identity_groups_per_step():
    """The identity slice goes 16 channels (32 bytes of bf16) per step on the vector path, fewer when it is
    narrower (a power of two of groups); on the element path as many as the branches' CG."""
    assert _inception._identity_groups(4, 4, 15, 1) == 4  # InceptionNeXt-T stage 1: 60 channels, 4 steps
    assert _inception._identity_groups(8, 8, 60, 1) == 2  # stage 4: 480 channels, 30 steps
    assert _inception._identity_groups(8, 8, 3, 2) == 2
    assert _inception._identity_groups(2, 2, 1, 1) == 1
    assert _inception._identity_groups(8, 8, 0, 4) == 1  # no identity slice: the loop does not run
    assert _inception._identity_groups(1, 1, 7, 2) == 2


def test_weight_gradient_sums_several_chunks_deterministically():
    """A map large enough for several chunks per group: the last program's ordered sum equals the reference, and a
    second call (the tickets reset by the first) gives the same bits."""
    shape, gc = (4, 8, 40, 9), 2
    x, params, dy = _inputs(shape, gc, 3, 11, torch.float32, seed=4)
    x, dy = _layout(x, "channels_last"), _layout(dy, "channels_last")
    geometry = _inception._geometry(x, gc, 3, dy)
    rows, columns = _inception._strip_counts(shape[0], shape[2], shape[3], geometry)
    slots = _inception._wgrad_layout(3, 11, gc, geometry["LANES"])[1]
    assert _inception._wgrad_chunks(min(rows, columns), 32 * _inception._WARPS, slots, 132) > 1
    _, first = _check(x, params, dy, torch.float32)
    second = inception_dwconv2d_backward(dy, x, params[0], params[2], params[4])
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_float32_weights_with_a_bfloat16_input():
    """Autocast's case: bf16 activations, fp32 weights; the weight gradients come back in fp32."""
    x, params, dy = _inputs((1, 16, 6, 9), 4, 3, 11, torch.float32, seed=5)
    x, dy = _layout(x.to(torch.bfloat16), "channels_last"), _layout(dy.to(torch.bfloat16), "channels_last")
    y = inception_dwconv2d_forward(x, *params)
    grads = inception_dwconv2d_backward(dy, x, params[0], params[2], params[4])
    y64, grads64 = _reference(x, params, dy)
    assert y.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads[1:])
    assert_close(y, y64, torch.bfloat16, scale=float(y64.abs().max()))
    for g, g64 in zip(grads[1:], grads64[1:], strict=True):
        assert_relative_error(g, g64, 1e-5)  # products of bf16 x and fp32 dy... summed in fp32


def test_empty_batch():
    x, params, dy = _inputs((0, 16, 5, 6), 4, 3, 7, torch.float32)
    assert inception_dwconv2d_forward(x, *params).shape == (0, 16, 5, 6)
    grads = inception_dwconv2d_backward(dy, x, params[0], params[2], params[4])
    assert grads[0].shape == x.shape
    assert all(torch.count_nonzero(g) == 0 for g in grads[1:])


@pytest.mark.parametrize(
    "identity,gc,lanes", [(60, 12, 4), (120, 24, 8), (0, 16, 8), (7, 2, 1), (10, 10, 2), (16, 3, 1)]
)
def test_group_width_divides_every_slice(identity, gc, lanes):
    assert _inception._lanes(identity, gc) == lanes


@pytest.mark.parametrize("size,length,full", [(7, 7, True), (8, 8, True), (1, 1, True), (56, 7, False), (16, 8, False),
                                              (14, 7, False), (9, 5, False), (13, 7, False)])  # fmt: skip
def test_strip_length(size, length, full):
    assert _inception._strip_length(size) == (length, full)


def test_the_weight_gradient_takes_strips_of_at_most_7_at_8_channels_per_group():
    """Its tap sums, window and output gradients of a strip of 8 at 8 channels spilled (the forward's do not)."""
    geometry = dict(LANES=8, VEC=8, TW=8, TH=8, FULL_W=False, FULL_H=False, INT64=False)
    assert _inception._wgrad_geometry(geometry, 48, 32) == dict(geometry, TW=4, TH=6)  # the fewest padded, <= 7
    assert _inception._wgrad_geometry(dict(geometry, LANES=4, VEC=4), 48, 32) == dict(geometry, LANES=4, VEC=4)
    whole = dict(geometry, TW=8, TH=8, FULL_W=True, FULL_H=True)  # whole-map strips of 8 keep their length
    assert _inception._wgrad_geometry(whole, 8, 8) == whole
    assert _inception._strip_length(56, 7) == (7, False) and _inception._strip_length(64, 7) == (4, False)


def test_groups_per_step_divide_the_branch_groups():
    """Up to four groups of a position side by side in a warp on a GPU (16 on the interpreter), a power of two that
    divides a branch's groups (the kernel masks no channel); BLOCK_A x CG = 128 threads."""
    assert _inception._mixer_config(3, 4) == (128, 1)  # InceptionNeXt-T stages 1-2
    assert _inception._mixer_config(6, 4) == (64, 2)  # stage 3
    assert _inception._mixer_config(12, 4) == (32, 4)  # stage 4
    assert _inception._mixer_config(16, 4) == (32, 4)
    assert _inception._mixer_config(1, 4) == (128, 1)
    assert _inception._mixer_config(16, 16) == (8, 16)


def test_parts_of_a_block():
    """The grid is blocks x parts: the identity's parts, as many as a branch has (or one per step of IDG groups if
    it has fewer; the last step partly masked), then three branches' parts (runs of part_steps steps of CG
    groups)."""
    parts = _inception._mixer_parts
    assert parts(15, 4, 3, 1, 1) == (2, 3)  # InceptionNeXt-T stage 1, one step per part: 4 identity steps in 2
    assert parts(15, 4, 3, 1, 3) == (1, 1)  # a slice per part
    assert parts(60, 2, 12, 4, 1) == (3, 3)  # stage 4: the identity's 30 steps in 3 parts of 10
    assert parts(60, 2, 12, 4, 2) == (2, 2)
    assert parts(30, 2, 6, 2, 2) == (2, 2)  # stage 3: 15 identity steps in 2 parts of 8 and 7
    assert parts(0, 1, 4, 4, 1) == (0, 1)  # no identity slice
    assert parts(7, 1, 20, 1, 3) == (7, 7)  # 7 identity steps of one group: 7 parts
    assert _inception._programs_per_block(60, 2, 12, 4, 1) == 12


def test_steps_per_part_reach_the_target_programs():
    """The most steps per part that still give the target number of programs, one when none does; InceptionNeXt-T
    at batch 128 on a GPU (396 programs): whole slices at stages 1 and 2 (448 and 112 blocks x 4 parts), two of
    the three steps at stage 3 (56 blocks x 8 parts), one at stage 4 (28 x 12)."""
    target = _inception.GridTargets().forward * 132
    assert _inception._part_steps(448, 15, 4, 3, 1, target) == 3
    assert _inception._part_steps(112, 15, 2, 3, 1, target) == 3
    assert _inception._part_steps(56, 30, 2, 6, 2, target) == 2
    assert _inception._part_steps(28, 60, 2, 12, 4, target) == 1
    assert _inception._part_steps(1, 60, 2, 12, 4, 1) == 3  # the interpreter's target: a slice per program


def test_grid_targets_set_the_gpu_grid_and_are_restored(monkeypatch):
    """On a GPU (the interpreter's own targets switched off here), the grid targets decide the launchers' steps per
    part and weight-gradient chunks; ``grid_targets`` changes them inside its block only, also when the block
    raises, and refuses targets below one. InceptionNeXt-T stage 1 at batch 128 on 132 SMs: 448 blocks of strips;
    9 weight-gradient groups over 57344 strips in blocks of 128."""
    monkeypatch.setattr(_inception, "INTERPRETER", False)
    monkeypatch.setattr(_inception, "sm_count", lambda device: 132)
    default = _inception.GRID

    def stage1():
        device = torch.device("cuda")  # only asked for its number of SMs
        part_steps = _inception._launch_part_steps(448, 15, 4, 3, 1, device)
        return part_steps, _inception._wgrad_chunks(57344, 128, 9, _inception.sm_count(device))

    # defaults: 396 programs (whole slices: 448 x 4 >= 396); cdiv(4 x 132, 9) = 59 chunks (<= 57344 / 512)
    assert stage1() == (3, 59)
    with _inception.grid_targets(forward=64, weight_gradient=16, weight_gradient_blocks=1):
        # 8448 programs: one step per part (448 x 11 = 4928, the most there are); cdiv(16 x 132, 9) = 235 chunks
        assert stage1() == (1, 235)
    with pytest.raises(RuntimeError), _inception.grid_targets(weight_gradient=8):
        assert stage1() == (3, 112)  # cdiv(8 x 132, 9) = 118 chunks, at least 4 blocks each: 57344 / 512 = 112
        raise RuntimeError
    assert _inception.GRID is default and stage1() == (3, 59)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="GridTargets.forward must be a positive int"):
            _inception.GridTargets(forward=bad)
    assert _inception.GRID is default


@pytest.mark.parametrize("part_steps", [1, 2])
@pytest.mark.parametrize(
    "shape,gc,layout", [((2, 64, 5, 6), 16, "nchw"), ((1, 96, 4, 5), 32, "channels_last"), ((1, 64, 3, 11), 8,
    "channels_last"), ((2, 22, 7, 10), 6, "strided")], ids=str
)  # fmt: skip
def test_parts_of_one_or_two_steps(monkeypatch, part_steps, shape, gc, layout):
    """The GPU's partitions (parts of one step of at most 4 groups; also two steps, the last part short) under the
    interpreter, which runs larger steps and whole slices per program by default: identity steps with a masked
    tail (64: 40 identity channels in steps of 4 groups of 4), 4 groups per step (gc 32 in groups of 8; NCHW's gc
    16 in groups of one), 2 (gc 6, strided)."""
    monkeypatch.setattr(_inception, "_part_steps", lambda *args: part_steps)
    monkeypatch.setattr(_inception, "_MAX_GROUPS_PER_STEP", _inception._GPU_MAX_GROUPS_PER_STEP)
    x, params, dy = _inputs(shape, gc, 3, 7, torch.float32, seed=6)
    x, dy = _layout(x, layout), _layout(dy, layout)
    _check(x, params, dy, torch.float32)


# ------------------------------------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("channels,size,batch", [(96, 56, 8), (192, 28, 8), (384, 14, 8), (768, 7, 32)], ids=str)
def test_gpu_stages_match_reference_under_every_grid(monkeypatch, channels, size, batch):
    """InceptionNeXt-T's four stages (bf16, channels_last, gc = C / 8, square 3, band 11) on a GPU: the vector
    path, the inline-PTX bf16 conversion and the weight gradient's tickets outside the interpreter, against the
    float64 reference with the default grid targets and the extremes of scripts/benchmark.py's sweep
    (MIXER_GRID_SWEEP), launched as for a GPU of 8 SMs so that at these small batches the settings give other
    grids (checked: at least two forward and two weight-gradient grids per stage). Another grid splits the same
    per-output work differently, so the output and the input gradient are the default's bit for bit; the weight
    gradients add their chunks in another order (checked against the reference's bound)."""
    monkeypatch.setattr(_inception, "sm_count", lambda device: 8)
    grids = []
    launch = _inception.launchable

    class Recorded:  # the launches' grids, in order: forward, input gradient, weight gradient
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            grids.append(grid)
            return launch(self.kernel)[grid]

    monkeypatch.setattr(_inception, "launchable", Recorded)
    shape, gc = (batch, channels, size, size), channels // 8
    x, params, dy = _inputs(shape, gc, 3, 11, torch.bfloat16, seed=3)
    x, dy = _layout(x, "channels_last"), _layout(dy, "channels_last")
    y, grads = _check(x, params, dy, torch.bfloat16)
    sweep = (dict(forward=1), dict(forward=64, weight_gradient=16, weight_gradient_blocks=1), dict(weight_gradient=2))
    for targets in sweep:
        with _inception.grid_targets(**targets):
            y_other, grads_other = _check(x, params, dy, torch.bfloat16)
        assert torch.equal(y_other, y) and torch.equal(grads_other[0], grads[0]), targets
    assert len(grids) == 3 * (1 + len(sweep))
    assert len(set(grids[0::3])) >= 2 and len(set(grids[2::3])) >= 2, grids
