"""zoo::gelu_grn: the fused Triton kernels (interpreter on CPU) against the float64 reference, and the reference
against UniRepLKNet's modules."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels._backend import INTERPRETER, ticket_counters, tl, triton
from zoo.kernels._gelu import gelu_and_slope
from zoo.kernels._sample_tiles import blocks, positions_per_chunk
from zoo.kernels.gelu_grn import (
    GRN_STAGES,
    gelu_grn,
    gelu_grn_backward,
    gelu_grn_forward,
    gelu_grn_reference,
)
from zoo.layers.unireplknet import GRN

BACKENDS = ["torch", "triton"]
# (shape of h, dtype, with beta). On the interpreter a tile is 64 elements of up to 16 channels, and a sample's map
# splits into chunks until the grid has 24 programs: [2, 5, 7, 40] has three channel blocks, the last one half
# masked, and chunks of 12 positions (three tiles; the last chunk two tiles and a partial one); [3, 4, 9, 48] three
# whole blocks and three chunks of three whole tiles; [1, 1, 1, 16] one position.
CASES = [
    ((2, 5, 7, 40), torch.float32, True),
    ((2, 5, 7, 40), torch.bfloat16, True),
    ((2, 5, 7, 40), torch.float16, True),
    ((3, 4, 9, 48), torch.float32, False),
    ((1, 1, 1, 16), torch.bfloat16, True),
]


def _parameters(channels: int, beta: bool = True, seed: int = 0) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    gamma = 0.5 * torch.randn(1, 1, 1, channels, generator=gen)
    shift = 0.3 * torch.randn(1, 1, 1, channels, generator=gen) if beta else None
    return [gamma.to(DEVICE), None if shift is None else shift.to(DEVICE)]


def _run(h, params, dy, backend, out_dtype=None):
    """Output and the gradients of h, gamma (and beta) on fresh leaves."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in (h, *params)]
    y = gelu_grn(*leaves, out_dtype=out_dtype, backend=backend)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in leaves if t is not None]


def _check(h, params, dy, backend, out_dtype=None):
    results = _run(h, params, dy, backend, out_dtype)
    as_double = [None if p is None else p.double() for p in params]
    expected = _run(h.double(), as_double, dy.double(), "torch", torch.float64)
    y, dh, *grads = results
    assert y.dtype == (out_dtype or h.dtype) and dh.dtype == h.dtype and y.shape == h.shape
    assert_close(y, expected[0], y.dtype, scale=float(expected[0].abs().max().clamp_min(1.0)))
    assert_close(dh, expected[1], h.dtype, scale=float(expected[1].abs().max().clamp_min(1.0)))
    for grad, reference, param in zip(grads, expected[2:], [p for p in params if p is not None], strict=True):
        assert grad.dtype == param.dtype and grad.shape == param.shape
        # float32 sums over the samples and positions (the inputs are the same values in both)
        assert_relative_error(grad, reference, 1e-4)


@triton.jit
def _gelu_kernel(x_ptr, y_ptr, slope_ptr, n, BLOCK: tl.constexpr, APPROX: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets, mask=offsets < n)
    y, slope = gelu_and_slope(x, APPROX)
    tl.store(y_ptr + offsets, y, mask=offsets < n)
    tl.store(slope_ptr + offsets, slope, mask=offsets < n)


@pytest.mark.parametrize(
    "device",
    [
        pytest.param(DEVICE, id="here"),
        pytest.param(
            "cuda",
            id="compiled",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
        ),
    ],
)
def test_the_kernels_gelu_is_as_accurate_as_torchs(device):
    """zoo/kernels/_gelu.py against float64 on a dense grid: GELU within 5e-7 absolute everywhere (PyTorch's float32
    GELU: 3.8e-7; this one 3.8e-7 on the interpreter), relative error below 3e-6 for x >= -4 (PyTorch's: 1e-3 near
    -4, where 1 + erf cancels; this one 1.9e-6 on the interpreter, about 2.1e-6 modelled with a GPU's approximate
    exponential and reciprocal), the slope within 4e-7 absolute. "compiled": the GPU's kernels (``APPROX``)."""
    x = torch.linspace(-12.0, 12.0, 200_001, device=device)
    y, slope = torch.empty_like(x), torch.empty_like(x)
    approx = x.is_cuda and not INTERPRETER
    _gelu_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, slope, x.numel(), BLOCK=1024, APPROX=approx)
    leaf = x.double().requires_grad_()
    expected = torch.nn.functional.gelu(leaf)
    (expected_slope,) = torch.autograd.grad(expected.sum(), leaf)
    expected = expected.detach()
    assert (y.double() - expected).abs().max() < 5e-7
    relative = ((y.double() - expected).abs() / expected.abs())[(x >= -4.0) & (expected != 0)]
    assert relative.max() < 3e-6
    assert (slope.double() - expected_slope).abs().max() < 4e-7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,dtype,beta", CASES, ids=str)
def test_forward_and_gradients_match_float64_reference(shape, dtype, beta, backend):
    torch.manual_seed(1)
    h = (1.5 * torch.randn(shape, device=DEVICE)).to(dtype)
    dy = torch.randn(shape, device=DEVICE).to(dtype)
    _check(h, _parameters(shape[-1], beta, seed=1), dy, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_out_as_under_autocast(backend):
    """The block's call under bf16 autocast: the Linear's bf16 output in, the second Linear's bf16 input out."""
    torch.manual_seed(2)
    h = torch.randn(2, 5, 7, 40, device=DEVICE)
    dy = torch.randn(2, 5, 7, 40, device=DEVICE).to(torch.bfloat16)
    _check(h, _parameters(40, seed=2), dy, backend, out_dtype=torch.bfloat16)


def test_reference_is_the_modules():
    """The reference is UniRepLKNet's ``nn.GELU`` then :class:`GRN` (official formula), in float64."""
    torch.manual_seed(3)
    h = torch.randn(2, 6, 5, 12, dtype=torch.float64)
    grn = GRN(12).double()
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    expected = grn(torch.nn.functional.gelu(h))
    torch.testing.assert_close(gelu_grn_reference(h, grn.gamma, grn.beta), expected, rtol=1e-12, atol=1e-12)
    assert (expected - torch.nn.functional.gelu(h)).abs().max() > 0.1  # GRN's scale and shift matter


@pytest.mark.parametrize("layout", ["permuted", "strided-map", "expanded-grad"])
def test_non_contiguous_inputs(layout):
    """Any strides: the channels of a permuted NCHW tensor (channel stride H W), a map whose rows do not merge into
    one stride (copied first), and an expanded gradient (stride 0)."""
    torch.manual_seed(4)
    if layout == "permuted":
        h = torch.randn(2, 24, 5, 6, device=DEVICE).permute(0, 2, 3, 1)
    elif layout == "strided-map":
        h = torch.randn(2, 5, 9, 24, device=DEVICE)[:, :, ::2]
    else:
        h = torch.randn(2, 5, 6, 24, device=DEVICE)
    dy = torch.randn(1, 1, 1, 24, device=DEVICE).expand(h.shape) if layout == "expanded-grad" else torch.randn_like(h)
    assert not h.is_contiguous() or not dy.is_contiguous()
    _check(h, _parameters(24, seed=4), dy, "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_norms_give_finite_gradients(backend):
    """A channel whose GELU is zero everywhere (h = -30: Phi underflows) has Gx = 0, and a sample of zeros has every
    Gx = 0 (Nx = 0, the scale 1 / eps): no NaN, and the norm's gradient is zero there, as torch.norm's."""
    torch.manual_seed(5)
    h = torch.randn(3, 4, 5, 16, device=DEVICE)
    h[0, :, :, 3] = -30.0
    h[1] = 0.0
    dy = torch.randn_like(h)
    _check(h, _parameters(16, seed=5), dy, backend)


GPU_BLOCK_C = (256, 128, 64, 32, 16)  # the compiled kernels' choices of BLOCK_C, tiles of 2048 elements


@pytest.mark.parametrize("channels", [16, 24, 40, 160, 320, 480, 2560])
def test_blocks_and_chunks_cover_the_map(channels):
    """BLOCK_C divides C where one of the choices does (UniRepLKNet's widths), else the last block is masked; the
    chunks are whole tiles and cover every position, fewer of them as samples x blocks fill the grid."""
    for positions in (1, 7, 49, 196, 784, 3136):
        block_p, block_c, even = blocks(channels, positions, GPU_BLOCK_C, 2048)
        assert block_c & (block_c - 1) == 0 and block_p * block_c == 2048 and even == (channels % block_c == 0)
        assert even or channels % 16
        for batch in (1, 128):
            rows = positions_per_chunk(positions, batch * -(-channels // block_c), block_p, 132)
            chunks = -(-positions // rows)
            assert rows % block_p == 0 and (chunks - 1) * rows < positions <= chunks * rows
        assert positions_per_chunk(3136, 1, block_p, 132) < positions_per_chunk(3136, 1000, block_p, 132)


def test_tiles_pad_the_map_least():
    """Of the BLOCK_C choices dividing C, the one whose tile height pads the positions least, the widest on a tie:
    UniRepLKNet-T's four stages (4 C, H W)."""
    tiles = {(c, p): blocks(c, p, GPU_BLOCK_C, 2048)[:2] for c, p in ((320, 3136), (640, 784), (1280, 196), (2560, 49))}
    assert tiles == {(320, 3136): (32, 64), (640, 784): (16, 128), (1280, 196): (8, 256), (2560, 49): (8, 256)}
    assert blocks(160, 3136, GPU_BLOCK_C, 2048)[:2] == (64, 32)  # unireplknet_a's stage 1: 32 is the widest divisor
    assert blocks(40, 49, GPU_BLOCK_C, 2048) == (32, 64, False)  # no choice divides 40: 64 with a masked block


@pytest.mark.parametrize(
    "shape,tile", [((2, 7, 7, 512), (8, 256)), ((2, 6, 6, 128), (16, 128)), ((1, 3, 3, 40), (32, 64))], ids=str
)
def test_the_compiled_kernels_tiles_on_the_interpreter(shape, tile, monkeypatch):
    """The tiles a GPU launch takes (2048 elements; here 8 x 256 with a partial tile of 1 row, 16 x 128, and 32 x 64
    with a masked channel block), run through the interpreter against the float64 reference."""
    import zoo.kernels._sample_tiles as tiles
    import zoo.kernels.gelu_grn as module

    chosen = []

    def gpu_blocks(channels, positions):
        chosen.append(blocks(channels, positions, GPU_BLOCK_C, 2048))
        return chosen[-1]

    monkeypatch.setattr(tiles, "blocks", gpu_blocks)
    monkeypatch.setattr(module, "_BLOCK_F", 256)
    torch.manual_seed(10)
    h = 1.5 * torch.randn(shape, device=DEVICE)
    _check(h, _parameters(shape[-1], seed=10), torch.randn_like(h), "triton")
    assert chosen and all(blocks[:2] == tile for blocks in chosen)


def test_backward_is_deterministic_and_leaves_the_tickets_at_zero():
    torch.manual_seed(6)
    h = torch.randn(3, 4, 9, 48, device=DEVICE)
    dy = torch.randn_like(h)
    params = _parameters(48, seed=6)
    first = _run(h, params, dy, "triton")
    assert torch.count_nonzero(ticket_counters(h.device, 3)) == 0
    second = _run(h, params, dy, "triton")
    for u, v in zip(first, second, strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 3, 16), (2, 0, 3, 16)], ids=str)
def test_empty_input(shape, backend):
    gamma, beta = (p.requires_grad_() for p in _parameters(16))
    h = torch.zeros(shape, device=DEVICE, requires_grad=True)
    y = gelu_grn(h, gamma, beta, backend=backend)
    assert y.shape == shape
    y.sum().backward()
    assert h.grad.shape == shape and not gamma.grad.any() and not beta.grad.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_clear_errors(backend):
    h = torch.randn(2, 3, 3, 16, device=DEVICE)
    gamma, beta = _parameters(16)
    with pytest.raises(ValueError, match=r"h must be \[B, H, W, C\]"):
        gelu_grn(h[0], gamma, beta, backend=backend)
    with pytest.raises(ValueError, match="gamma must hold C = 16 values"):
        gelu_grn(h, gamma[..., :8], beta, backend=backend)
    with pytest.raises(TypeError, match="beta must be a floating-point"):
        gelu_grn(h, gamma, beta.long(), backend=backend)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        gelu_grn(h, gamma, beta, 0.0, backend=backend)
    with pytest.raises(TypeError, match="out_dtype must be None or a floating-point"):
        gelu_grn(h, gamma, beta, out_dtype=torch.int8, backend=backend)
    with pytest.raises(TypeError, match="h must be a torch.Tensor"):
        gelu_grn(h.tolist(), gamma, beta, backend=backend)


def test_triton_refuses_more_samples_than_the_grid_takes():
    h = torch.zeros(65536, 1, 1, 16, device=DEVICE)
    gamma, beta = _parameters(16)
    with pytest.raises(ValueError, match="at most 65535 samples a call, got 65536"):
        gelu_grn(h, gamma, beta, backend="triton")


def test_the_public_backward_checks_its_inputs():
    """gelu_grn_backward checks grad_output and the saved statistics (the autograd path, whose forward made them and
    whose gradient autograd shapes, skips the checks)."""
    h = torch.randn(2, 3, 3, 16, device=DEVICE)
    gamma, beta = _parameters(16)
    _y, stats = gelu_grn_forward(h, gamma, beta)
    with pytest.raises(ValueError, match=r"grad_output must be a floating-point tensor of the shape of h"):
        gelu_grn_backward(torch.randn(2, 3, 3, 8, device=DEVICE), h, stats, gamma, beta)
    with pytest.raises(ValueError, match=r"stats must be the forward's float32 \[2, 17\]"):
        gelu_grn_backward(torch.randn_like(h), h, stats.double(), gamma, beta)


def test_opcheck_forward_and_backward():
    torch.manual_seed(7)
    h = torch.randn(2, 3, 5, 24, device=DEVICE, requires_grad=True)
    gamma, beta = (p.requires_grad_() for p in _parameters(24, seed=7))
    torch.library.opcheck(torch.ops.zoo.gelu_grn.default, (h, gamma, beta, 1e-6, torch.bfloat16))
    torch.library.opcheck(torch.ops.zoo.gelu_grn.default, (h, gamma, None, 1e-6, None))
    y, stats = torch.ops.zoo.gelu_grn(h, gamma, beta, 1e-6, None)
    dy = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.zoo.gelu_grn_backward.default,
        (dy, h.detach(), stats.detach(), gamma.detach(), beta.detach()),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch.manual_seed(8)
    h = torch.randn(2, 3, 5, 24, device=DEVICE)
    params = [p for p in _parameters(24, seed=8) if p is not None]
    dy = torch.randn(2, 3, 5, 24, device=DEVICE)

    def fn(h, gamma, beta):
        return gelu_grn(h * 2.0, gamma, beta, backend=backend) + 1.0

    eager = [t.clone().requires_grad_(True) for t in (h, *params)]
    compiled = [t.clone().requires_grad_(True) for t in (h, *params)]
    fn(*eager).backward(dy)
    y = torch.compile(fn, fullgraph=True)(*compiled)
    y.backward(dy)
    assert_close(y, fn(h, *params), torch.float32, scale=float(y.detach().abs().max()))
    for e, c in zip(eager, compiled, strict=True):
        assert_relative_error(c.grad, e.grad, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "side,channels,dtype", [(*stage, torch.bfloat16) for stage in GRN_STAGES] + [(14, 1280, torch.float32)], ids=str
)
def test_gpu_stages_match_reference(side, channels, dtype):
    """UniRepLKNet-T's four stages in bf16 (as under autocast) and stage 3 in float32 (the compiled GELU's
    approximate reciprocal at float32 tolerance), compiled kernels, batch 16."""
    torch.manual_seed(9)
    h = torch.randn(16, side, side, channels, device="cuda").to(dtype)
    dy = torch.randn_like(h)
    _check(h, _parameters(channels, seed=9), dy, "triton")
