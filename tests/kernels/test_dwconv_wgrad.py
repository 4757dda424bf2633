"""The depthwise-convolution weight and bias gradient (zoo/kernels/dwconv/_wgrad.py): one launch, every kernel-size
variant, against the float64 reference's autograd; deterministic; the ticket counters are left at zero."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DEVICE
from zoo.kernels._backend import ticket_counters
from zoo.kernels.dwconv import _wgrad, dwconv2d
from zoo.kernels.dwconv.reference import dwconv2d_reference

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

# the rounding of the fp32 sums to the weight's dtype: half an ulp, one ulp for bf16 (the interpreter converts
# fp32 to bf16 by truncation; a GPU rounds to nearest)
ROUNDING = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-11}


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every second column of a wider tensor, channels_last underneath: no unit stride
        wide = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype, device=x.device)
        wide = wide.contiguous(memory_format=torch.channels_last)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x.contiguous()


def _reference(x: torch.Tensor, dy: torch.Tensor, kernel, stride, dilation) -> tuple[torch.Tensor, torch.Tensor]:
    """(dw, db) in float64 from the reference's autograd."""
    weight = torch.zeros(x.shape[1], 1, *kernel, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    y = dwconv2d_reference(x.double(), weight, bias, stride, dilation)
    y.backward(dy.double())
    return weight.grad, bias.grad


def _check(x, dy, kernel, stride, dilation, weight_dtype=None):
    """weight_grad against the float64 reference: each element within the rounding of the weight's dtype plus
    fp32 accumulation error (bounded by the sum of |dy x| over the element's terms)."""
    weight = torch.randn(x.shape[1], 1, *kernel, device=x.device).to(weight_dtype or x.dtype)
    dw, db = _wgrad.weight_grad(x, dy, weight, stride, dilation)
    assert dw.shape == weight.shape and db.shape == (x.shape[1],)
    assert dw.dtype == db.dtype == weight.dtype
    dw64, db64 = _reference(x, dy, kernel, stride, dilation)
    dw_abs, db_abs = _reference(x.abs(), dy.abs(), kernel, stride, dilation)
    rounding = ROUNDING[weight.dtype]
    for got, want, magnitude in ((dw, dw64, dw_abs), (db, db64, db_abs)):
        bound = rounding * want.abs() + 1e-6 * magnitude + 1e-30
        excess = (got.double() - want).abs() - bound
        assert excess.max() <= 0, f"max error above the bound by {excess.max():.3e}\ngot  {got}\nwant {want}"
    return dw, db


def _inputs(shape, kernel, stride, dilation, dtype, layout, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    out = dwconv2d_reference(
        x.double(), torch.zeros(shape[1], 1, *kernel, dtype=torch.float64, device=x.device), None, stride, dilation
    )
    dy = torch.randn(out.shape, device=DEVICE).to(dtype)
    return _layout(x, layout), _layout(dy, layout)


# every constexpr variant (square 3..11, bands), the generic one (13), maps smaller than the kernel, odd maps; the
# interpreter's tiles are 3 columns wide: rows of 9 and 10 take the unmasked first / interior / last tiles (EDGES);
# NCHW rows of at most 4 (_wgrad.WHOLE_ROW_MAX under the interpreter) are one tile (WHOLE_ROW)
@pytest.mark.parametrize(
    "shape,kernel",
    [
        ((2, 5, 7, 9), (3, 3)),
        ((1, 5, 4, 10), (3, 3)),  # the last tile of a row overlaps the one before
        ((1, 6, 6, 5), (5, 5)),
        ((1, 5, 5, 9), (7, 7)),
        ((1, 5, 4, 8), (7, 7)),  # first, interior and last tiles would leave a gap: the masked path
        ((1, 3, 4, 3), (7, 7)),  # smaller than the kernel: one tile per row
        ((1, 3, 4, 5), (7, 7)),  # smaller than the kernel, wider than WHOLE_ROW_MAX: the masked path
        ((2, 5, 7, 4), (3, 3)),  # one tile per row
        ((1, 5, 5, 4), (5, 5)),
        ((1, 3, 6, 1), (3, 3)),  # a single column
        ((1, 5, 5, 9), (9, 9)),
        ((1, 3, 4, 12), (11, 11)),
        ((1, 6, 5, 9), (1, 5)),
        ((1, 5, 8, 4), (7, 1)),
        ((1, 3, 3, 13), (1, 11)),
        ((1, 3, 13, 2), (11, 1)),
        ((1, 3, 4, 5), (13, 13)),  # the generic variant, larger than the map
    ],
    ids=str,
)
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_every_kernel_size(shape, kernel, layout):
    x, dy = _inputs(shape, kernel, 1, 1, torch.float32, layout)
    _check(x, dy, kernel, (1, 1), (1, 1))


@pytest.mark.parametrize(
    "dtype,layout",
    [
        (torch.float32, "channels_last"),
        (torch.bfloat16, "nchw"),
        (torch.float16, "strided"),
        (torch.bfloat16, "channels_last"),
    ],
    ids=str,
)
@pytest.mark.parametrize(
    "shape,kernel,stride,dilation",
    [
        ((2, 5, 7, 9), (3, 3), (2, 2), (1, 1)),
        ((1, 6, 9, 8), (3, 5), (1, 1), (2, 3)),
        ((1, 5, 7, 6), (7, 7), (2, 1), (1, 2)),
    ],
    ids=str,
)
def test_stride_dilation_dtypes_layouts(shape, kernel, stride, dilation, dtype, layout):
    x, dy = _inputs(shape, kernel, stride, dilation, dtype, layout)
    _check(x, dy, kernel, stride, dilation)


def test_fp32_weight_with_bf16_activations():
    """The gradients come back in the weight's dtype (fp32 master weights under bf16 activations)."""
    x, dy = _inputs((2, 6, 6, 7), (3, 3), 1, 1, torch.bfloat16, "channels_last")
    _check(x, dy, (3, 3), (1, 1), (1, 1), weight_dtype=torch.float32)


def test_strided_grad_output():
    """A grad_output that is a view (its own strides, unlike x's) is read as it is."""
    x, _ = _inputs((1, 5, 6, 7), (5, 5), 1, 1, torch.float32, "channels_last")
    dy = torch.randn(1, 5, 6, 14, device=DEVICE)[..., ::2]
    _check(x, dy, (5, 5), (1, 1), (1, 1))


def test_deterministic_and_counters_reset():
    """Two calls give bitwise-equal gradients (the last program adds the strips' partials in a fixed order), and
    every ticket counter is back at zero after a launch."""
    x, dy = _inputs((2, 5, 5, 6), (3, 3), 1, 1, torch.bfloat16, "channels_last", seed=3)
    weight = torch.randn(5, 1, 3, 3, device=DEVICE)
    first = _wgrad.weight_grad(x, dy, weight, (1, 1), (1, 1))
    second = _wgrad.weight_grad(x, dy, weight, (1, 1), (1, 1))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert torch.count_nonzero(ticket_counters(x.device, 1)) == 0


def test_through_dwconv2d_autograd():
    """The op's backward returns these gradients (ops.py calls weight_grad)."""
    x, dy = _inputs((1, 4, 4, 5), (3, 3), 1, 1, torch.float32, "channels_last", seed=4)
    weight = torch.randn(4, 1, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(4, device=DEVICE, requires_grad=True)
    dwconv2d(x, weight, bias, backend="triton").backward(dy)
    dw, db = _wgrad.weight_grad(x, dy, weight.detach(), (1, 1), (1, 1))
    assert torch.equal(weight.grad, dw) and torch.equal(bias.grad, db)


def test_rows_up_to_whole_row_max_are_one_tile():
    """At stride and dilation 1 an NCHW row of at most WHOLE_ROW_MAX columns is one column tile (its borders known
    at compile time); wider rows, stride 2, dilation and channels_last do not take that path."""

    def config(w, stride=(1, 1), dilation=(1, 1), layout=torch.contiguous_format):
        x = torch.empty(1, 4, 6, w).contiguous(memory_format=layout)
        out_h, out_w = (6 - 1) // stride[0] + 1, (w - 1) // stride[1] + 1  # "same" padding
        dy = torch.empty(1, 4, out_h, out_w).contiguous(memory_format=layout)
        return _wgrad._plan(x.shape, x.stride(), dy.shape, dy.stride(), (3, 3), stride, dilation, 4)["config"]

    narrow = config(_wgrad.WHOLE_ROW_MAX)
    assert narrow["WHOLE_ROW"] and not narrow["EDGES"] and narrow["TILE_W"] == _wgrad.WHOLE_ROW_MAX
    assert not config(_wgrad.WHOLE_ROW_MAX + 1)["WHOLE_ROW"]
    assert not config(_wgrad.WHOLE_ROW_MAX, stride=(2, 2))["WHOLE_ROW"]
    assert not config(_wgrad.WHOLE_ROW_MAX, dilation=(2, 2))["WHOLE_ROW"]
    assert not config(_wgrad.WHOLE_ROW_MAX, layout=torch.channels_last)["WHOLE_ROW"]


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_merged_borders_with_an_overlapping_last_tile(layout, monkeypatch):
    """MERGED (7 x 7 at stride and dilation 1): the first and last tiles of a row in one masked copy. With 4-column
    tiles (the interpreter's are 3, where the last tile never overlaps an earlier one at 7 x 7) an 11-column row has
    tiles at 0 and 4, and a last one at 7 whose output column 7 the tile at 4 already covered: it must read zeros
    there (the mask on the output gradient's columns), as the GPU's 8-column tiles do on 59-column rows."""
    config = _wgrad._config

    def four_columns(*args, **kwargs):
        return {**config(*args, **kwargs), "TILE_W": 4}

    monkeypatch.setattr(_wgrad, "_config", four_columns)
    monkeypatch.setattr(_wgrad, "merged_borders", lambda taps, tile_w: taps > 25)  # on a GPU too (from 8 columns)
    plan = _wgrad._plan((1, 3, 5, 11), (165, 1, 33, 3), (1, 3, 5, 11), (165, 1, 33, 3), (7, 7), (1, 1), (1, 1), 4)
    assert plan["config"]["EDGES"] and plan["config"]["MERGED"]
    x, dy = _inputs((1, 3, 5, 11), (7, 7), 1, 1, torch.float32, layout, seed=5)
    _check(x, dy, (7, 7), (1, 1), (1, 1))
