"""Helpers shared by the depthwise-convolution kernels: Triton routines (offsets, the generic tap loop, the bf16
widening ``to_f32``), launcher helpers (layouts, output allocation, 64-bit offsets) and the benchmark shapes and useful-work arithmetic of the loop report (zoo/kernels/_aot.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zoo.kernels._backend import INTERPRETER, cdiv, check_float_tensor, check_triton_dtypes, tl, triton

# ----------------------------------------------------------------------------------------------------------------
# Triton tile routines
#
# A tile is BLOCK_P positions (flattened over n, row, column: small maps fill a tile) x BLOCK_C channels. The same
# tile routine computes the forward ("gather": output position o reads the input at o s - p + k d) and the input
# gradient ("scatter" read backwards: input position i reads the output gradient at (i + p - k d) / s where that is
# an integer in range), looping over the taps; the shifted loads hit L1/L2.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def split_positions(p, width, height):
    """Flattened position -> (image, row, column)."""
    col = p % width
    rest = p // width
    return rest // height, rest % height, col


@triton.jit
def index(v, INT64: tl.constexpr):
    """Offset arithmetic in 64 bits only for tensors whose offsets reach 2^31 (the launcher decides)."""
    if INT64:
        return v.to(tl.int64)
    else:
        return v


@triton.jit
def conv_tile(
    src_ptr,
    w_ptr,
    w_c,
    w_h,
    w_w,
    n,
    row,
    col,
    p_mask,
    c,
    c_mask,
    src_h,
    src_w,
    s_n,
    s_c,
    s_h,
    s_w,
    KH,
    KW,
    dil_h,
    dil_w,
    pad_h,
    pad_w,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """fp32 [BLOCK_P, BLOCK_C]: sum over taps of weight[c, 0, kh, kw] * src[..., c] at the tap's position (zero
    outside the map); channels ``c`` are read where ``c_mask`` (0 elsewhere).

    ``w_ptr`` is the module's [C, 1, KH, KW] weight with strides (w_c, ., w_h, w_w), read as it is: no transposed
    table to build per call (a launch of its own), at the price of one load per channel and tap. Forward
    (TRANSPOSED=False): src is x, (row, col) an output position. Input gradient (TRANSPOSED=True): src is the
    output gradient, (row, col) an input position."""
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    w_base = w_ptr + c * w_c  # 32-bit offsets: a depthwise weight has far fewer than 2^31 elements
    base = src_ptr + (index(n, INT64) * s_n)[:, None] + (index(c, INT64) * s_c)[None, :]
    for kh in range(KH):
        if TRANSPOSED:
            shifted = row + pad_h - kh * dil_h
            r = shifted // STRIDE_H
            row_ok = (shifted >= 0) & (r * STRIDE_H == shifted) & (r < src_h)
        else:
            r = row * STRIDE_H - pad_h + kh * dil_h
            row_ok = (r >= 0) & (r < src_h)
        row_ok = row_ok & p_mask
        row_offset = index(r, INT64) * s_h
        for kw in range(KW):
            if TRANSPOSED:
                shifted_w = col + pad_w - kw * dil_w
                q = shifted_w // STRIDE_W
                ok = row_ok & (shifted_w >= 0) & (q * STRIDE_W == shifted_w) & (q < src_w)
            else:
                q = col * STRIDE_W - pad_w + kw * dil_w
                ok = row_ok & (q >= 0) & (q < src_w)
            offsets = row_offset + index(q, INT64) * s_w
            # the tap's weights before its values: the other order spilled 8 bytes on Triton 3.6 (NCHW, strided)
            weights = tl.load(w_base + kh * w_h + kw * w_w, mask=c_mask, other=0.0)
            values = tl.load(base + offsets[:, None], mask=ok[:, None] & c_mask[None, :], other=0.0)
            acc += values.to(tl.float32) * weights.to(tl.float32)[None, :]
    return acc


@triton.jit
def tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64: tl.constexpr):
    offsets = index(n, INT64) * d_n + index(row, INT64) * d_h + index(col, INT64) * d_w
    return offsets[:, None] + (index(c, INT64) * d_c)[None, :]


# bf16 -> fp32 of a packed pair in one integer instruction per element (inline PTX; the interpreter cannot run it).
_PTX_BF16: tl.constexpr = tl.constexpr(not INTERPRETER)


@triton.jit
def to_f32(x):
    """fp32 of a loaded tile. bf16 widens with one integer instruction per element (a shift for the low half of each
    packed pair, a mask for the high half; the default lowering spends two on the high half); fp16 converts, fp32
    stays."""
    if (x.dtype == tl.bfloat16) and _PTX_BF16:
        return tl.inline_asm_elementwise(
            "{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }",
            "=r,=r,r",
            [x],
            dtype=tl.float32,
            is_pure=True,
            pack=2,
        )
    else:
        return x.to(tl.float32)


# ----------------------------------------------------------------------------------------------------------------
# Launcher helpers
# ----------------------------------------------------------------------------------------------------------------

# The register bound of the depthwise kernels' configurations (``triton.Config(maxnreg=...)``). Left to itself, ptxas
# bounds a kernel's registers for occupancy where it judges a spill cheap (128 or 168 a thread on sm_80; with one
# or two warps per program for the direct kernel's bands and 9 x 9 kernels, and for the mixer's stage-3 forward and
# fp32 input gradient), and spills; the bound 255 lets it keep every value in registers.
MAXNREG = 255


def make_configs(rows: tuple[tuple[int, ...], ...], names: tuple[str, ...], num_stages: int | None = None) -> list:
    """``triton.Config`` s from rows of (the values of ``names``..., num_warps); ``num_stages`` when given."""
    stages = {} if num_stages is None else {"num_stages": num_stages}
    return [triton.Config(dict(zip(names, row[:-1], strict=True)), num_warps=row[-1], **stages) for row in rows]


def layout_of(x: Tensor) -> str:
    """Which tile family suits ``x``: "channels_last" when channels are the contiguous dimension."""
    return "channels_last" if x.stride(1) == 1 and x.shape[1] > 1 else "nchw"


def memory_format(x: Tensor) -> torch.memory_format:
    """The memory format of the outputs: channels_last for a channels_last input, else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_like_format(x: Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    return torch.empty(tuple(shape), dtype=dtype or x.dtype, device=x.device, memory_format=memory_format(x))


def check_triton_dtype(**tensors: Tensor | None) -> None:
    check_triton_dtypes("the Triton depthwise-convolution kernels take", tensors)


def check_grad_output(grad_output: Tensor, expected_shape: Sequence[int], x: Tensor) -> None:
    check_float_tensor("grad_output", grad_output)
    if tuple(grad_output.shape) != tuple(expected_shape):
        raise ValueError(
            f"grad_output must have the output's shape {list(expected_shape)}, got {list(grad_output.shape)}"
        )
    if grad_output.device != x.device:
        raise ValueError(f"grad_output must be on the device of x ({x.device}), got {grad_output.device}")
    check_triton_dtype(grad_output=grad_output)


def needs_int64(*tensors: Tensor) -> bool:
    """Whether some element offset of these tensors reaches 2^31 (the kernels then compute offsets in 64 bits).
    Every element lies in the tensor's storage, so a storage of fewer elements past the view's offset answers
    without walking the strides (a launcher calls this on every call: host time)."""
    limit = 2**31 - 1
    for t in tensors:
        if not t.numel():
            continue
        if t.untyped_storage().nbytes() // t.element_size() - t.storage_offset() <= limit:
            continue
        if sum((size - 1) * step for size, step in zip(t.shape, t.stride(), strict=True)) >= limit:
            return True
    return False


def positions_per_program(n_positions: int, parallel_programs: int) -> int:
    """Output positions each weight-gradient program reduces: enough programs to fill a GPU several times
    (about 1000), each reducing at least 512 positions so the partial sums stay small."""
    if INTERPRETER:
        return 16  # several chunks even on tiny test inputs
    chunks = max(1, min(cdiv(1024, parallel_programs), cdiv(n_positions, 512)))
    return cdiv(n_positions, chunks)


def strides4(t: Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


# ----------------------------------------------------------------------------------------------------------------
# Benchmark shapes and useful work (the loop report's specs)
# ----------------------------------------------------------------------------------------------------------------

DWCONV_BENCHMARKS = tuple((64, c, h, k) for c, h in ((384, 56), (768, 14)) for k in (3, 7, 13, 31))
INCEPTION_BENCHMARKS = ((128, 96, 56), (128, 192, 28), (128, 384, 14), (128, 768, 7))


def taps_on_map(size: int, k: int, dilation: int = 1) -> int:
    """Useful work along one axis of a "same" convolution at stride 1: the (output position, tap) pairs whose
    input lies on the map, not on the zero padding; a 2-D map has the product of its two axes'."""
    pad = dilation * (k - 1) // 2
    return sum(0 <= o - pad + t * dilation < size for o in range(size) for t in range(k))


def meta_strides(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return torch.empty(shape, device="meta", memory_format=memory_format).stride()


def named_strides(prefixes: Sequence[str], strides: tuple[int, ...]) -> dict[str, int]:
    return {f"{prefix}_{axis}": stride for prefix in prefixes for axis, stride in zip("nchw", strides, strict=True)}


def layout_specs(kernel, config_sets: dict[str, list], pointers: Sequence[str], flag_sets: Sequence[dict]) -> list:
    """Coverage compile specs (zoo/kernels/_aot.py) of one autotuned kernel, for bf16 (the training dtype) in both
    layouts: every configuration with the launch-time specialisations of a contiguous model activation (strides
    and sizes divisible by 16, the unit stride a constant), each set of flags, and again with arbitrary strides,
    64-bit offsets and stride 2; for fp32 and fp16 the first configuration. The tests compile the first
    configuration's specs (``ci``), the CLI all of them. ``pointers`` name the tensor arguments (``partial_ptr`` is
    fp32)."""
    from zoo.kernels._aot import KernelSpec

    strides = {f"{t}_{d}" for t in ("s", "d", "x", "g") for d in ("n", "c", "h", "w")}
    divisible = strides | {"C", "n_positions", "positions_per_program"}
    unit_stride = {"channels_last": {"s_c", "d_c", "x_c", "g_c"}, "nchw": {"s_w", "d_w", "x_w", "g_w"}}
    specs = []
    for layout, configs in config_sets.items():
        variants = [("bf16", config, flags, False) for config in configs for flags in flag_sets]
        variants += [("bf16", config, flags, True) for config in configs for flags in flag_sets]
        variants += [(dtype, configs[0], flags, False) for dtype in ("fp32", "fp16") for flags in flag_sets]
        for dtype, config, flags, strided in variants:
            constexprs = {**config.kwargs, **flags, "INT64": strided}
            if "STRIDE_H" in kernel.arg_names:
                constexprs.update(STRIDE_H=2 if strided else 1, STRIDE_W=2 if strided else 1)
            signature = {}
            for name in kernel.arg_names:
                if name in constexprs:
                    continue
                if name in pointers:
                    signature[name] = "*fp32:16" if name == "partial_ptr" else f"*{dtype}:16"
                elif name in unit_stride[layout]:
                    signature[name] = "i32:1"
                elif name == "w_w":  # a weight's column stride: 1, or any (a strided view of a larger weight)
                    signature[name] = "i32" if strided else "i32:1"
                else:
                    signature[name] = "i32:16" if name in divisible and not strided else "i32"
            label = ",".join(f"{k[6:]}{v}" for k, v in config.kwargs.items())  # "BLOCK_P64" -> "P64"
            direction = {True: ",bwd", False: ",fwd"}.get(flags.get("TRANSPOSED"), "")
            specs.append(
                KernelSpec(
                    name=f"{kernel.__name__}[{dtype},{layout},{label},w{config.num_warps}{direction}"
                    f"{',strided' if strided else ''}]",
                    fn=kernel,
                    signature=signature,
                    constexprs=constexprs,
                    num_warps=config.num_warps,
                    ci=config is configs[0],
                )
            )
    return specs


# The forward (bias) and input-gradient (transposed, no bias) variants of a convolution kernel.
CONV_FLAGS = ({"TRANSPOSED": False, "HAS_BIAS": True}, {"TRANSPOSED": True, "HAS_BIAS": False})
