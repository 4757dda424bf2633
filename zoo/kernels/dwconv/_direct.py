"""Register-blocked depthwise convolution for kernels up to 11 x 11 at stride 1: forward and input gradient.

The kernel size is a ``tl.constexpr`` (variants: k x k, 1 x k and k x 1 for k in 3, 5, 7, 9, 11), so every tap
loop unrolls and every index is a compile-time constant. A program covers ``ROWS`` output rows x a strip of
``G * BW`` output columns x ``BLOCK_C`` channels of one image; each thread owns a few channels (``V`` =
BLOCK_C * G / (32 * num_warps), contiguous in channels_last: one 8- or 16-byte load per column) x ``BW``
output columns. The program walks down its input rows once: each input row is loaded and converted to fp32
once (``BW + KW - 1`` columns, a window in registers) and feeds every output row it touches: KH rows of
accumulators in flight (a tuple indexed by age: each step, row kh takes kernel row kh on top of what row kh - 1
held, and the oldest row is complete). One input row per loop trip: the shift is renaming in SSA (no register
moves), and the loop body stays KH times smaller than an unrolled rotation's, which made Triton's compile take
80 s at 7 x 7 and 8 minutes at 11 x 11 (its coalescing pass grows with the square of the body's memory operations;
2 s at 7 x 7 now). The KH x KW
weights of the thread's channels are loaded once per program from the ``[C, 1, kh, kw]`` weight (no table).
The window's columns are loop-invariant pointers, so a load or store costs one address instruction for its row;
bf16 pairs are unpacked with one instruction per element (inline PTX; the plain conversion under the
interpreter).

Borders: the loop only visits input rows on the map (rows off the map are zeros: skipped), so rows need no masks
in the loop; a program whose column window and channel block lie inside the map runs unmasked loads and stores,
the others (scalar branch per program) the masked copy of the same loop. After the loop the rows still in flight
are stored (their remaining input rows are off the map), masked. On maps up to ``WHOLE_ROW_MAX`` wide, 3 x 3, 5 x 5
and 7 x 7 kernels compile for the map's width (``FW``): one strip of the whole row, its off-map columns known at compile
time (no column masks), where every program would otherwise be a border program.

Dilation d: the output columns of a thread are d apart (o, o + d, ...), and so are the rows a program walks, so
the input window is again a run of BW + KW - 1 consecutive taps' columns: a program works on one residue class
(row mod d, column mod d) of the map, a dilation-1 convolution of that sub-map; d is a runtime value.

Input gradient (stride 1, "same" padding, odd kernel): dx = the correlation of dy with the kernel flipped on both
axes; ``flip`` reads the weights in reverse tap order, nothing else changes. ``flip``, ``has_bias`` and ``ROWS``
are runtime arguments, so one compile per kernel size, layout and dtype serves the forward (with or without a
bias), the input gradient and every autotuned row count.

NCHW and other strides: the same kernel (lanes still run over channels; in NCHW the loads are 2-byte scalars,
each thread's columns contiguous in one row; static cost 1.7 instructions per FFMA at 3 x 3, 1.25 at 7 x 7).
"""

from __future__ import annotations

from torch import Tensor

from zoo.kernels._backend import INTERPRETER, cdiv, launchable, tl, triton
from zoo.kernels.dwconv._common import (
    DWCONV_BENCHMARKS,
    MAXNREG,
    index,
    layout_of,
    meta_strides,
    named_strides,
    needs_int64,
    strides4,
    taps_on_map,
    to_f32,
)

KERNEL_SIZES = (3, 5, 7, 9, 11)
SHAPES = tuple((k, k) for k in KERNEL_SIZES) + tuple((1, k) for k in KERNEL_SIZES) + tuple((k, 1) for k in KERNEL_SIZES)


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------------------


@triton.constexpr_function
def _on_map(q, pw, fw):
    """Whether window column ``q`` (the column ``q - pw`` of the strip) can be on the map: always for the general
    strips (``fw == 0``, masked at run time where needed); for a whole-row strip of ``fw`` columns, known here."""
    return fw == 0 or pw <= q < pw + fw


@triton.jit
def _load_row(
    cols, row_off, col_ok, c_ok, row_ok, MASKED: tl.constexpr, N: tl.constexpr, FW: tl.constexpr, PW: tl.constexpr
):
    """The N columns of one input row's window as fp32 tiles [G, BLOCK_C] (a tuple): ``cols[q]`` points at column q
    of the first row, ``row_off`` (a scalar) moves to this row. MASKED: columns off the map, channels past C and
    rows past the last (``row_ok``, a scalar) read zero. FW > 0 (a whole row of FW columns per strip): the columns
    off the map are known at compile time, not loaded (a placeholder that :func:`_step` never reads)."""
    xs = ()
    for q in tl.static_range(N):
        ptrs = cols[q] + row_off
        if not _on_map(q, PW, FW):
            xs = xs + (0.0,)
        elif FW > 0 and MASKED:
            xs = xs + (to_f32(tl.load(ptrs, mask=c_ok & row_ok, other=0.0)),)
        elif MASKED:
            xs = xs + (to_f32(tl.load(ptrs, mask=col_ok[q] & c_ok & row_ok, other=0.0)),)
        else:
            xs = xs + (to_f32(tl.load(ptrs)),)
    return xs


@triton.jit
def _step(acc, xs, w, bias, KH: tl.constexpr, KW: tl.constexpr, BW: tl.constexpr, FW: tl.constexpr):
    """One input row into the KH output rows in flight: after input row s, ``acc[kh * BW + t]`` is output row
    s - kh (column t), which has taken kernel rows 0..kh. So row kh takes kernel row kh of this input row on top of
    what row kh - 1 held before it (row 0 starts from the bias), and row KH - 1 is complete. With FW > 0 the taps on
    columns off the map are not issued."""
    new = ()
    for kh in tl.static_range(KH - 1, -1, -1):  # oldest row first: each takes its predecessor's registers
        row = ()
        for t in tl.static_range(BW):
            if kh == 0:
                a = bias
            else:
                a = acc[(kh - 1) * BW + t]
            for kw in tl.static_range(KW):
                if _on_map(t + kw, (KW - 1) // 2, FW):
                    a = a + xs[t + kw] * w[kh * KW + kw]
            row = row + (a,)
        new = row + new
    return new


@triton.jit
def _store_row(
    acc, row: tl.constexpr, cols, row_off, out_ok, c_ok, ok, MASKED: tl.constexpr, BW: tl.constexpr, FW: tl.constexpr
):
    """Store accumulator row ``row`` (BW columns) where the scalar ``ok`` holds (and, MASKED, inside the map; with
    FW > 0 every column is)."""
    for t in tl.static_range(BW):
        v = acc[row * BW + t].to(cols[t].dtype.element_ty)
        if FW > 0 and MASKED:
            tl.store(cols[t] + row_off, v, mask=c_ok & ok)
        elif MASKED:
            tl.store(cols[t] + row_off, v, mask=out_ok[t] & c_ok & ok)
        else:
            tl.store(cols[t] + row_off, v, mask=ok)


@triton.jit
def _walk_rows(
    acc,
    w,
    src_cols,
    dst_cols,
    src_step,
    dst_step,
    s_lo,
    s_hi,
    col_ok,
    out_ok,
    c_ok,
    bias,
    MASKED: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BW: tl.constexpr,
    FW: tl.constexpr,
):
    """Steps s_lo..s_hi (input row r0 - KH // 2 + s, all on the map), one per loop trip: the row's window feeds the
    KH output rows in flight (:func:`_step`), and output row m = s - KH + 1, now complete, is stored. One step per
    trip keeps the loop body (and Triton's compile time, which grows with the square of its memory operations)
    KH times smaller than unrolling the rotation would; the rows in flight shift by one age per step in SSA,
    without register moves. Returns the accumulators (:func:`_finish_rows` stores the rest)."""
    for s in range(s_lo, s_hi + 1):
        xs = _load_row(src_cols, s * src_step, col_ok, c_ok, True, MASKED, BW + KW - 1, FW, (KW - 1) // 2)
        acc = _step(acc, xs, w, bias, KH, KW, BW, FW)
        m = s - (KH - 1)  # below rows: s_hi <= rows + KH - 2
        _store_row(acc, KH - 1, dst_cols, m * dst_step, out_ok, c_ok, m >= 0, MASKED, BW, FW)
    return acc


@triton.jit
def _finish_rows(
    acc, dst_cols, dst_step, s_hi, rows, out_ok, c_ok, KH: tl.constexpr, BW: tl.constexpr, FW: tl.constexpr
):
    """After the loop (one copy for both of its versions): the rows still in flight, output rows s_hi - kh for
    kh < KH - 1, are complete where they lie on the segment (their remaining input rows are off the map; past the
    segment's last row they are not stored)."""
    for kh in tl.static_range(KH - 1):
        m = s_hi - kh
        _store_row(acc, kh, dst_cols, m * dst_step, out_ok, c_ok, (m >= 0) & (m < rows), True, BW, FW)


@triton.jit(do_not_specialize=["flip", "has_bias"])  # 0 and 1 would be two specialisations, two compiles
def _direct_kernel(
    src_ptr,
    w_ptr,
    b_ptr,
    dst_ptr,
    C,
    H,
    W,
    s_n,
    s_c,
    s_h,
    s_w,
    d_n,
    d_c,
    d_h,
    d_w,
    dil_h,
    dil_w,
    flip,
    has_bias,
    ROWS,
    KH: tl.constexpr,
    KW: tl.constexpr,
    INT64: tl.constexpr,
    BW: tl.constexpr,
    G: tl.constexpr,
    BLOCK_C: tl.constexpr,
    FW: tl.constexpr = 0,
):
    """dst = src (*) weight (+ bias where has_bias) at stride 1 with "same" padding and dilation (dil_h, dil_w);
    flip: the kernel flipped on both axes (the input gradient, src = dy, dst = dx). Program id, fastest first:
    channel block, column strip, column phase (mod dil_w), row segment of ROWS rows, row phase (mod dil_h), image.

    flip, has_bias and ROWS are runtime values: they change a few instructions per program (the weights' and the
    bias's addresses, the segment's extent), and as constexprs they would multiply the compiles of this kernel by
    six: forward with and without a bias, input gradient, two row-segment sizes.

    FW > 0: the map is FW columns wide, dilation 1 along the columns, one strip of G = 1 x BW = FW columns: the
    columns off the map are known at compile time (no column masks; their loads and taps are left out), and only a
    partial channel block takes the masked loop."""
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    sub_h = tl.cdiv(H, dil_h)
    sub_w = tl.cdiv(W, dil_w)
    strips = tl.cdiv(sub_w, G * BW)
    segments = tl.cdiv(sub_h, ROWS)
    cb = pid % c_blocks
    rest = pid // c_blocks
    strip = rest % strips
    rest = rest // strips
    pw = rest % dil_w
    rest = rest // dil_w
    seg = rest % segments
    rest = rest // segments
    ph = rest % dil_h
    n = rest // dil_h
    Hs = tl.cdiv(H - ph, dil_h)  # the phase's sub-map
    Ws = tl.cdiv(W - pw, dil_w)
    r0 = seg * ROWS
    j0 = strip * (G * BW)
    PH: tl.constexpr = (KH - 1) // 2
    PW: tl.constexpr = (KW - 1) // 2
    if (r0 < Hs) & (j0 < Ws):
        rows = tl.minimum(ROWS, Hs - r0)
        c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = (c < C)[None, :]
        w = ()
        for tap in tl.static_range(KH * KW):
            wt = tl.load(w_ptr + c * (KH * KW) + (tap + flip * (KH * KW - 1 - 2 * tap)), mask=c < C, other=0.0)
            w = w + (wt.to(tl.float32)[None, :],)
        b = tl.load(b_ptr + c, mask=(c < C) & (has_bias != 0), other=0.0).to(tl.float32)[None, :]
        bias = b + tl.zeros((G, BLOCK_C), dtype=tl.float32)
        src_step = index(dil_h, INT64) * s_h
        dst_step = index(dil_h, INT64) * d_h
        src_row = src_ptr + index(n, INT64) * s_n + index(ph, INT64) * s_h + pw * s_w + (r0 - PH) * src_step
        dst_row = dst_ptr + index(n, INT64) * d_n + index(ph, INT64) * d_h + pw * d_w + r0 * dst_step
        c_off = (index(c, INT64) * s_c)[None, :]
        dc_off = (index(c, INT64) * d_c)[None, :]
        g = j0 + tl.arange(0, G)[:, None] * BW
        src_cols = ()  # pointers to the window's columns in the first input row (loop-invariant)
        col_ok = ()
        for q in tl.static_range(BW + KW - 1):
            col = g + (q - PW)
            src_cols = src_cols + (src_row + index(col, INT64) * (dil_w * s_w) + c_off,)
            col_ok = col_ok + ((col >= 0) & (col < Ws),)
        dst_cols = ()
        out_ok = ()
        for t in tl.static_range(BW):
            dst_cols = dst_cols + (dst_row + index(g + t, INT64) * (dil_w * d_w) + dc_off,)
            out_ok = out_ok + (g + t < Ws,)
        acc = ()
        for _j in tl.static_range(KH * BW):
            acc = acc + (bias,)
        s_lo = tl.maximum(PH - r0, 0)  # steps whose input row is on the map
        s_hi = tl.minimum(rows + KH - 2, Hs - 1 - r0 + PH)
        if FW > 0:
            interior = cb * BLOCK_C + BLOCK_C <= C
        else:
            interior = (cb * BLOCK_C + BLOCK_C <= C) & (j0 >= PW) & (j0 + G * BW + PW <= Ws)
        if interior:
            acc = _walk_rows(
                acc, w, src_cols, dst_cols, src_step, dst_step, s_lo, s_hi, col_ok, out_ok, c_ok, bias, False,
                KH, KW, BW, FW,
            )  # fmt: skip
        else:
            acc = _walk_rows(
                acc, w, src_cols, dst_cols, src_step, dst_step, s_lo, s_hi, col_ok, out_ok, c_ok, bias, True,
                KH, KW, BW, FW,
            )  # fmt: skip
        _finish_rows(acc, dst_cols, dst_step, s_hi, rows, out_ok, c_ok, KH, BW, FW)


# ----------------------------------------------------------------------------------------------------------------
# Configurations: (ROWS, BW, G, BLOCK_C, num_warps). A thread holds KH * KW * V weights and KH * BW * V
# accumulators (V channels); the GPU tiles keep those within 120 registers (_tile): 8 channels (16-byte bf16 loads)
# for the 1 x k bands up to 7, 4 (8-byte loads) at 3 x 3, fewer as the kernel grows. NCHW threads read 2-byte
# scalars anyway: one channel, wider column runs.
# ----------------------------------------------------------------------------------------------------------------

_NAMES = ("ROWS", "BW", "G", "BLOCK_C")


def _config(rows: int, bw: int, g: int, v: int, warps: int):
    meta = dict(zip(_NAMES, (rows, bw, g, v * 32 * warps // g), strict=True))
    return triton.Config(meta, num_warps=warps, num_stages=1, maxnreg=MAXNREG)


def _tile(kernel: tuple[int, int], layout: str, int64: bool = False, bw: int | None = None) -> tuple[int, int]:
    """(V channels per thread, BW columns per thread): the most channels whose KH KW V weights and KH BW V
    accumulators stay within 120 registers (the window, pointers and masks take about as many again). In NCHW,
    whose loads are scalars, the window's BW + KW - 1 columns count too (within 160: fp16 bands spilled on sm_80
    with 8 channels); with 64-bit offsets (tensors of 2^31 elements and more) one channel per thread, as every
    channel's column offsets then take two registers. ``bw``: the columns per thread, when given (a whole row)."""
    kh, kw = kernel
    if bw is None:
        bw = 8 if kh == 1 or (layout == "nchw" and kh * kw <= 9) else 4
        if kh * kw >= 81:
            bw = 2
    if int64:
        return 1, bw
    if layout == "nchw":
        return next(v for v in (8, 4, 2, 1) if v == 1 or (kh * kw + kh * bw + bw + kw - 1) * v <= 160), bw
    return next(v for v in (8, 4, 2, 1) if v == 1 or (kh * kw + kh * bw) * v <= 120), bw


def _gpu_configs(kernel: tuple[int, int], layout: str, int64: bool = False, fw: int = 0) -> list:
    v, bw = _tile(kernel, layout, int64, bw=fw or None)
    tiles = []
    for rows, warps in ((32, 1), (64, 1)):
        g = 1 if fw else max(1, v * 32 * warps // 128)  # channel blocks of at most 128; one strip of a whole row
        tiles.append(_config(rows, bw, g, v, warps))
    return tiles


def configs(kernel: tuple[int, int], layout: str, int64: bool = False, fw: int = 0) -> list:
    """The autotune configurations of one kernel shape, layout, offset width and whole-row width (``fw``, 0: any
    width; one small fixed tile under the interpreter)."""
    if INTERPRETER:
        return [triton.Config(dict(ROWS=5, BW=fw or 2, G=1 if fw else 2, BLOCK_C=8), num_warps=1)]
    return _gpu_configs(kernel, layout, int64, fw)


_KEY = ["C", "H", "W", "dil_h", "dil_w"]
_tuned: dict = {}


def _kernel_for(kernel: tuple[int, int], layout: str, int64: bool, fw: int):
    key = (kernel, layout, int64, fw)
    if key not in _tuned:
        _tuned[key] = triton.autotune(configs(kernel, layout, int64, fw), key=_KEY)(_direct_kernel)
    return _tuned[key]


# Maps this narrow (the 14 x 14 and 7 x 7 stages) take one strip of the whole row for these kernels: no column masks
# (every program of such a map is a border program otherwise). 7 x 7 x 14 columns holds 98 accumulators and 49
# weights per channel (one channel per thread: 239-255 registers); larger kernels would hold too many.
WHOLE_ROW_MAX = 16
WHOLE_ROW_KERNELS = ((3, 3), (5, 5), (7, 7))


def whole_row(kernel: tuple[int, int], width: int, dilation_w: int) -> int:
    """The whole-row width FW the launch compiles for (0: the general strips)."""
    return width if tuple(kernel) in WHOLE_ROW_KERNELS and dilation_w == 1 and width <= WHOLE_ROW_MAX else 0


def _programs(shape, dilation, meta) -> int:
    n, c, h, w = shape
    sub_h, sub_w = cdiv(h, dilation[0]), cdiv(w, dilation[1])
    return (
        n
        * dilation[0]
        * cdiv(sub_h, meta["ROWS"])
        * dilation[1]
        * cdiv(sub_w, meta["G"] * meta["BW"])
        * cdiv(c, meta["BLOCK_C"])
    )


# ----------------------------------------------------------------------------------------------------------------
# Launchers (called by ops.py with validated tensors and preallocated outputs)
# ----------------------------------------------------------------------------------------------------------------


def supports(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], layout: str) -> bool:
    """Whether this path computes the convolution: stride 1 and a k x k, 1 x k or k x 1 kernel with odd k <= 11
    (any dilation >= 1, either layout or any strides)."""
    return (
        tuple(stride) == (1, 1)
        and tuple(kernel) in SHAPES
        and min(dilation) >= 1
        and layout in ("channels_last", "nchw")
    )


def _launch(src: Tensor, weight: Tensor, bias: Tensor | None, dst: Tensor, dilation, flip: bool) -> None:
    if not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
        raise ValueError("the direct kernels read the [C, 1, kh, kw] weight and the bias as contiguous tensors")
    kernel = (weight.shape[2], weight.shape[3])
    n, channels, h, w = dst.shape
    dilation = (int(dilation[0]), int(dilation[1]))

    def grid(meta):
        return (_programs(dst.shape, dilation, meta),)

    int64 = needs_int64(src, dst)
    fw = whole_row(kernel, w, dilation[1])
    launchable(_kernel_for(kernel, layout_of(src), int64, fw))[grid](
        src,
        weight,
        weight if bias is None else bias,
        dst,
        channels,
        h,
        w,
        *strides4(src),
        *strides4(dst),
        dilation[0],
        dilation[1],
        int(flip),
        int(bias is not None),
        KH=kernel[0],
        KW=kernel[1],
        INT64=int64,
        FW=fw,
    )


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, stride, dilation) -> None:
    """y = dwconv2d(x, weight, bias, stride = 1, dilation) written into ``y`` (x's shape; any strides)."""
    if tuple(stride) != (1, 1):
        raise ValueError(f"the direct kernels run stride 1 only, got {tuple(stride)}")
    if y.numel():
        _launch(x, weight, bias, y, dilation, flip=False)


def input_grad(grad_output: Tensor, weight: Tensor, dx: Tensor, stride, dilation) -> None:
    """dx of dwconv2d at stride 1 (the correlation of ``grad_output`` with the flipped kernel) into ``dx``."""
    if tuple(stride) != (1, 1):
        raise ValueError(f"the direct kernels run stride 1 only, got {tuple(stride)}")
    if dx.numel():
        _launch(grad_output, weight, None, dx, dilation, flip=True)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time specs (zoo/kernels/_aot.py)
# ----------------------------------------------------------------------------------------------------------------

_POINTERS = ("src_ptr", "w_ptr", "b_ptr", "dst_ptr")


def _signature(dtype: str, layout: str, strided: bool) -> dict[str, str]:
    unit = {"channels_last": {"s_c", "d_c"}, "nchw": {"s_w", "d_w"}}[layout]
    signature = {}
    for name in _direct_kernel.arg_names:
        if name in _NAMES and name != "ROWS" or name in ("KH", "KW", "INT64", "FW"):
            continue
        if name in ("flip", "has_bias"):
            signature[name] = "i32"
        elif name in ("w_ptr", "b_ptr"):
            signature[name] = "*fp32:16"
        elif name in _POINTERS:
            signature[name] = f"*{dtype}:16"
        elif name in ("dil_h", "dil_w"):
            signature[name] = "i32:1" if not strided else "i32"
        elif name in unit and not strided:
            signature[name] = "i32:1"
        else:
            signature[name] = "i32:16" if not strided and name not in ("H", "W") else "i32"
    return signature


def aot_specs() -> list:
    """Coverage specs (the package's ``aot_specs`` adds every module's :func:`benchmark_specs`): the first GPU configuration of every kernel shape (k x k, 1 x k, k x 1, k = 3..11) in both
    layouts: bf16 forward (bias) and input gradient (flipped), fp32 and fp16 forward, and the input gradient in bf16
    with arbitrary strides and dilation and 64-bit offsets; the whole-row variants (``whole_row``: 3 x 3, 5 x 5
    and 7 x 7 on maps 14 and 7 wide) in bf16 and fp32. (Each configuration of 3 x 3 and 7 x 7 is compiled by
    :func:`benchmark_specs`; the direction changes only the weights' addresses.) The 3 x 3 channels_last bf16
    specs are compiled in the tests (``ci``)."""
    specs = []
    for kernel in SHAPES:
        for layout in ("channels_last", "nchw"):
            variants = [("bf16", False, False), ("bf16", True, False), ("fp32", False, False), ("fp16", False, False)]
            variants.append(("bf16", True, True))
            for dtype, flip, strided in variants:
                ci = layout == "channels_last" and kernel == (3, 3) and dtype == "bf16" and not strided
                specs.append(_coverage_spec(kernel, layout, dtype, flip, strided, 0, ci))
    for kernel in WHOLE_ROW_KERNELS:
        for fw in (14, 7):
            for layout in ("channels_last", "nchw"):
                for dtype in ("bf16", "fp32"):
                    ci = (kernel, fw, layout, dtype) == ((3, 3), 14, "channels_last", "bf16")
                    specs.append(_coverage_spec(kernel, layout, dtype, False, False, fw, ci))
    return specs


def _coverage_spec(kernel, layout: str, dtype: str, flip: bool, strided: bool, fw: int, ci: bool):
    """The first GPU configuration of one kernel shape, layout, dtype, direction, stride variant (arbitrary strides
    and 64-bit offsets) and whole-row width (0: the general strips)."""
    from zoo.kernels._aot import KernelSpec

    config = _gpu_configs(kernel, layout, int64=strided, fw=fw)[0]
    tile = {name: value for name, value in config.kwargs.items() if name != "ROWS"}
    label = "R{ROWS},BW{BW},G{G},C{BLOCK_C}".format(**config.kwargs) + (f",FW{fw}" if fw else "")
    return KernelSpec(
        name=f"_direct_kernel[{dtype},{layout},K{kernel[0]}x{kernel[1]},{label},"
        f"w{config.num_warps},{'bwd' if flip else 'fwd'}{',strided' if strided else ''}]",
        fn=_direct_kernel,
        signature=_signature(dtype, layout, strided),
        constexprs=dict(KH=kernel[0], KW=kernel[1], INT64=strided, FW=fw, **tile),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        ci=ci,
        maxnreg=config.maxnreg,
    )


def _interior_fraction(n: int, c: int, h: int, k: int, meta: dict, fw: int = 0) -> float:
    """The share of programs that take the unmasked loop (column window and channel block inside the map; with a
    whole-row strip, ``fw``, the channel block alone)."""
    strip = meta["G"] * meta["BW"]
    pad = (k - 1) // 2
    strips = cdiv(h, strip)
    inner_strips = strips if fw else sum(1 for s in range(strips) if s * strip >= pad and s * strip + strip + pad <= h)
    blocks = cdiv(c, meta["BLOCK_C"])
    full_blocks = c // meta["BLOCK_C"]
    return inner_strips / strips * full_blocks / blocks


def _average_loop_trips(h: int, k: int, rows: int) -> float:
    """Mean trip count of the row loop over the row segments of a map of height h (s_lo..s_hi, one input row per
    trip)."""
    pad = (k - 1) // 2
    trips = []
    for r0 in range(0, h, rows):
        length = min(rows, h - r0)
        s_lo, s_hi = max(pad - r0, 0), min(length + k - 2, h - 1 - r0 + pad)
        trips.append(s_hi - s_lo + 1)
    return sum(trips) / len(trips)


def benchmark_specs() -> list:
    """Loop-report specs at the benchmarked shapes with K = 3 and 7 (bf16, both layouts, forward and input
    gradient, every GPU configuration): the arguments the launcher passes there and the useful multiply-adds per
    program (the taps that land on the map, :func:`taps_on_map`). The row loop is compiled twice (unmasked, and
    masked for border programs: the copy with predicated loads); each copy's trips are the mean over all programs (its share of programs x the
    mean trip count). 3 x 3 and 7 x 7 at 14 x 14 compile for the whole row (``whole_row``), as the launcher does."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    for n, c, h, k in DWCONV_BENCHMARKS:
        if k not in (3, 7):
            continue
        case = f"B{n}xC{c}x{h}x{h}xK{k}"
        macs = n * c * taps_on_map(h, k) ** 2
        fw = whole_row((k, k), h, 1)
        for layout in ("channels_last", "nchw"):
            strides = meta_strides((n, c, h, h), layout)
            for config in _gpu_configs((k, k), layout, fw=fw):
                meta = config.kwargs
                programs = _programs((n, c, h, h), (1, 1), meta)
                trips = _average_loop_trips(h, k, meta["ROWS"])
                inner = _interior_fraction(n, c, h, k, meta, fw)
                work = Work(
                    case,
                    "MAC",
                    macs / programs,
                    ({"unmasked": trips * inner, "masked": trips * (1 - inner)},),
                    f"MACs = N C (taps on map per axis)^2 = {n} x {c} x {taps_on_map(h, k)}^2 = {macs}; programs = "
                    f"{programs}; row loop {trips:g} trips of one input row, unmasked in {inner:.3f} of the programs",
                )
                label = "R{ROWS},BW{BW},G{G},C{BLOCK_C}".format(**meta) + (f",FW{fw}" if fw else "")
                for flip in (False, True):
                    args = dict(
                        src_ptr="*bf16",
                        w_ptr="*fp32",
                        b_ptr="*fp32",
                        dst_ptr="*bf16",
                        C=c,
                        H=h,
                        W=h,
                        **named_strides(("s", "d"), strides),
                        dil_h=1,
                        dil_w=1,
                        KH=k,
                        KW=k,
                        flip=int(flip),
                        has_bias=int(not flip),
                        INT64=False,
                        FW=fw,
                        **meta,
                    )
                    specs.append(
                        launch_spec(
                            f"_direct_kernel[bf16,{layout},K{k},{label},w{config.num_warps},"
                            f"{'bwd' if flip else 'fwd'}]@{case}",
                            _direct_kernel,
                            args,
                            num_warps=config.num_warps,
                            num_stages=config.num_stages,
                            work=work,
                            ci=False,
                            maxnreg=config.maxnreg,
                        )
                    )
    return specs
