"""The fused InceptionNeXt token mixer (docs/semantics.md §2.2): identity on the first C - 3 gc channels, a
square, a 1 x band and a band x 1 depthwise convolution on gc channels each. The forward writes every slice of
the output in one launch (no split, no cat); the backward is the input gradient plus one weight-gradient launch
for the three branches."""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import INTERPRETER, check_triton_device, device_guard, tl, triton
from zoo.kernels.dwconv._checks import check_inception_inputs
from zoo.kernels.dwconv._common import (
    CONV_FLAGS,
    INCEPTION_BENCHMARKS,
    average_trips,
    check_grad_output,
    check_triton_dtype,
    conv_tile,
    empty_like_format,
    gradient,
    layout_of,
    layout_specs,
    make_configs,
    meta_strides,
    named_strides,
    needs_int64,
    positions_per_program,
    split_positions,
    store_wgrad_sums,
    strides4,
    taps_on_map,
    tile_offsets,
    weight_table,
    wgrad_tile_sums,
)


@triton.jit
def _inception_branch(branch, square, band, w_hw, w_w, w_h, b_hw, b_w, b_h):
    """(kh, kw, weight table, bias) of conv branch 1 (square), 2 (1 x band), 3 (band x 1)."""
    if branch == 1:
        kh = square
        kw = square
        w_ptr = w_hw
        b_ptr = b_hw
    elif branch == 2:
        kh = 1
        kw = band
        w_ptr = w_w
        b_ptr = b_w
    else:
        kh = band
        kw = 1
        w_ptr = w_h
        b_ptr = b_h
    return kh, kw, w_ptr, b_ptr


@triton.jit
def _branch_window(branch, C, id_channels, gc, local_block, BLOCK_C: tl.constexpr):
    """Channels of one program of conv branch ``branch`` (1..3): its slice [first, first + gc) of the tensor,
    walked in blocks that start at a multiple of 8 (so channels_last loads stay aligned 16-byte vectors however
    the slices fall). Returns (first, c, load mask: whole 8-channel groups of the window, exact mask: the
    slice)."""
    first = id_channels + (branch - 1) * gc
    start = (first // 8) * 8
    end = ((first + gc + 7) // 8) * 8
    c = start + local_block * BLOCK_C + tl.arange(0, BLOCK_C)
    return first, c, (c < end) & (c < C), (c >= first) & (c < first + gc)  # never past the last channel


@triton.jit
def _inception_kernel(
    src_ptr,
    dst_ptr,
    w_hw,
    b_hw,
    w_w,
    b_w,
    w_h,
    b_h,
    n_positions,
    H,
    W,
    C,
    id_channels,
    gc,
    square,
    band,
    s_n,
    s_c,
    s_h,
    s_w,
    d_n,
    d_c,
    d_h,
    d_w,
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One launch for the whole mixer: each position tile has the channel blocks of the identity slice, then
    those of each conv branch (1 square, 2 1 x band, 3 band x 1); each program writes its channels of dst.
    Forward (src x, dst y) or input gradient (TRANSPOSED: src dy, dst dx; the identity slice of dx is the
    identity slice of dy). Loads cover whole aligned 8-channel groups (vectorised); the lanes outside a slice
    are computed and dropped, only the slice is stored."""
    id_blocks = tl.cdiv(id_channels, BLOCK_C)
    conv_blocks = tl.cdiv(gc + 14, BLOCK_C)  # an aligned window spans at most gc + 14 channels
    blocks = id_blocks + 3 * conv_blocks  # channel blocks vary fastest (see _dwconv_kernel)
    block = tl.program_id(0) % blocks
    p = (tl.program_id(0) // blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < n_positions
    n, row, col = split_positions(p, W, H)
    if block < id_blocks:
        c = block * BLOCK_C + tl.arange(0, BLOCK_C)
        group_mask = p_mask[:, None] & ((c < ((id_channels + 7) // 8) * 8) & (c < C))[None, :]
        values = tl.load(src_ptr + tile_offsets(n, row, col, c, s_n, s_c, s_h, s_w, INT64), mask=group_mask)
        tl.store(
            dst_ptr + tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64),
            values,
            mask=p_mask[:, None] & (c < id_channels)[None, :],
        )
    else:
        branch = (block - id_blocks) // conv_blocks + 1
        first, c, load_mask, exact = _branch_window(
            branch, C, id_channels, gc, (block - id_blocks) % conv_blocks, BLOCK_C
        )
        if tl.sum(exact.to(tl.int32), axis=0) > 0:
            kh, kw, w_ptr, b_ptr = _inception_branch(branch, square, band, w_hw, w_w, w_h, b_hw, b_w, b_h)
            w_channel = c - first  # contiguous (vector loads); lanes outside the slice are masked by `exact`
            acc = conv_tile(
                src_ptr,
                w_ptr,
                gc,
                w_channel,
                exact,
                n,
                row,
                col,
                p_mask,
                c,
                load_mask,
                H,
                W,
                s_n,
                s_c,
                s_h,
                s_w,
                kh,
                kw,
                1,
                1,
                kh // 2,
                kw // 2,
                1,
                1,
                TRANSPOSED,
                INT64,
                BLOCK_P,
                BLOCK_C,
            )
            if HAS_BIAS and not TRANSPOSED:
                acc += tl.load(b_ptr + w_channel, mask=exact, other=0.0).to(tl.float32)[None, :]
            offsets = tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64)
            tl.store(dst_ptr + offsets, acc.to(dst_ptr.dtype.element_ty), mask=p_mask[:, None] & exact[None, :])


@triton.jit
def _inception_wgrad_kernel(
    x_ptr,
    dy_ptr,
    partial_ptr,
    n_positions,
    positions_per_program,
    H,
    W,
    C,
    id_channels,
    gc,
    square,
    band,
    x_n,
    x_c,
    x_h,
    x_w,
    g_n,
    g_c,
    g_h,
    g_w,
    INT64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial weight and bias gradients of the three branches: ``partial[branch - 1, chunk, c, tap]`` (taps
    0..kh*kw - 1, then the bias sum; rows padded to max(square^2, band) + 1 columns); program axis 1 = (branch - 1)
    * channel blocks + channel block (aligned windows, as in the forward), axis 2 = tap block."""
    max_taps = tl.maximum(square * square, band)
    conv_blocks = tl.cdiv(gc + 14, BLOCK_C)
    chunk = tl.program_id(0)
    branch = tl.program_id(1) // conv_blocks + 1
    first, c, load_mask, exact = _branch_window(branch, C, id_channels, gc, tl.program_id(1) % conv_blocks, BLOCK_C)
    tap_block = tl.program_id(2)
    tap = tap_block * BLOCK_T + tl.arange(0, BLOCK_T)
    kh, kw, _w, _b = _inception_branch(branch, square, band, x_ptr, x_ptr, x_ptr, x_ptr, x_ptr, x_ptr)
    if (tap_block * BLOCK_T < kh * kw) & (tl.sum(exact.to(tl.int32), axis=0) > 0):
        p_begin = chunk * positions_per_program
        p_end = tl.minimum(p_begin + positions_per_program, n_positions)
        sums, bias_sums = wgrad_tile_sums(
            x_ptr,
            dy_ptr,
            p_begin,
            p_end,
            c,
            load_mask,
            tap,
            H,
            W,
            H,
            W,
            x_n,
            x_c,
            x_h,
            x_w,
            g_n,
            g_c,
            g_h,
            g_w,
            kh,
            kw,
            1,
            1,
            kh // 2,
            kw // 2,
            1,
            1,
            INT64,
            BLOCK_T,
            BLOCK_P,
            BLOCK_C,
        )
        row = ((branch - 1).to(tl.int64) * tl.num_programs(0) + chunk) * gc + tl.where(exact, c - first, 0)
        store_wgrad_sums(partial_ptr, row, max_taps + 1, kh * kw, tap, exact, sums, bias_sums, tap_block == 0)


# One fixed small configuration under the interpreter (CPU tests); on the GPU, configurations autotuned per layout:


_TILE = ("BLOCK_P", "BLOCK_C")
WGRAD_TILE = ("BLOCK_T", "BLOCK_P", "BLOCK_C")
if INTERPRETER:
    INCEPTION_CONFIGS = {layout: make_configs(((16, 4, 1),), _TILE) for layout in ("channels_last", "nchw")}
    INCEPTION_WGRAD_CONFIGS = {
        layout: make_configs(((4, 8, 4, 1),), WGRAD_TILE) for layout in ("channels_last", "nchw")
    }
else:
    # the mixer kernels hold more state (two code paths, branch windows): the tiles that stay free of spills
    INCEPTION_CONFIGS = {
        "channels_last": make_configs(((64, 32, 4), (32, 64, 4)), _TILE),
        "nchw": make_configs(((128, 2, 4), (256, 1, 4), (256, 2, 4), (512, 1, 4)), _TILE),
    }
    INCEPTION_WGRAD_CONFIGS = {
        "channels_last": make_configs(((4, 32, 32, 4), (16, 16, 32, 8), (8, 32, 32, 8), (8, 16, 16, 4)), WGRAD_TILE),
        "nchw": make_configs(((8, 128, 1, 4), (4, 128, 2, 4), (16, 64, 1, 4)), WGRAD_TILE),
    }
_INCEPTION_KEY = ["id_channels", "gc", "square", "band", "W", "TRANSPOSED"]
_INCEPTION_WGRAD_KEY = ["gc", "square", "band", "W"]
_inception = {
    layout: triton.autotune(configs, key=_INCEPTION_KEY)(_inception_kernel)
    for layout, configs in INCEPTION_CONFIGS.items()
}
_inception_wgrad = {
    layout: triton.autotune(configs, key=_INCEPTION_WGRAD_KEY)(_inception_wgrad_kernel)
    for layout, configs in INCEPTION_WGRAD_CONFIGS.items()
}


def inception_dwconv2d_forward(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> Tensor:
    """Triton forward of :func:`inception_dwconv2d`: one launch writes all four channel slices."""
    gc, square, band = check_inception_inputs(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    check_triton_dtype(
        x=x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h, bias_hw=bias_hw, bias_w=bias_w, bias_h=bias_h
    )
    check_triton_device(x.device)
    y = empty_like_format(x, x.shape)
    if y.numel():
        with device_guard(x.device):
            _launch_inception(
                x,
                y,
                (weight_hw, weight_w, weight_h),
                (bias_hw, bias_w, bias_h),
                gc,
                square,
                band,
                transposed=False,
                layout=layout_of(x),
            )
    return y


def _launch_inception(
    src: Tensor, dst: Tensor, weights, biases, gc: int, square: int, band: int, transposed: bool, layout: str
) -> None:
    n, channels, h, w = dst.shape
    n_positions = n * h * w
    id_channels = channels - 3 * gc
    w_hw, w_w, w_h = (weight_table(t) for t in weights)
    b_hw, b_w, b_h = (w_hw if b is None else b for b in biases)

    def grid(meta):
        blocks = triton.cdiv(id_channels, meta["BLOCK_C"]) + 3 * triton.cdiv(gc + 14, meta["BLOCK_C"])
        return (triton.cdiv(n_positions, meta["BLOCK_P"]) * blocks,)

    _inception[layout][grid](
        src,
        dst,
        w_hw,
        b_hw,
        w_w,
        b_w,
        w_h,
        b_h,
        n_positions,
        h,
        w,
        channels,
        id_channels,
        gc,
        square,
        band,
        *strides4(src),
        *strides4(dst),
        TRANSPOSED=transposed,
        HAS_BIAS=biases[0] is not None,
        INT64=needs_int64(src, dst),
    )


def inception_dwconv2d_backward(
    grad_output: Tensor, x: Tensor, weight_hw: Tensor, weight_w: Tensor, weight_h: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward of :func:`inception_dwconv2d`: (dx, d weight_hw, d bias_hw, d weight_w, d bias_w,
    d weight_h, d bias_h); two launches (input gradient; weight and bias gradients of all three branches)."""
    gc, square, band = check_inception_inputs(x, weight_hw, None, weight_w, None, weight_h, None)
    check_triton_dtype(x=x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h)
    check_triton_device(x.device)
    check_grad_output(grad_output, x.shape, x)
    dx = empty_like_format(x, x.shape)
    weights = (weight_hw, weight_w, weight_h)
    if x.numel() == 0:
        zeros = [(torch.zeros_like(wt), wt.new_zeros(gc)) for wt in weights]
        return (dx, *zeros[0], *zeros[1], *zeros[2])
    layout = layout_of(x)
    n, channels, h, w = x.shape
    n_positions = n * h * w
    max_taps = max(square * square, band)
    per_program = positions_per_program(n_positions, 3 * triton.cdiv(gc, 32) * triton.cdiv(max_taps, 8))
    chunks = triton.cdiv(n_positions, per_program)
    partial = torch.empty((3, chunks, gc, max_taps + 1), dtype=torch.float32, device=x.device)

    def grid(meta):
        return (chunks, 3 * triton.cdiv(gc + 14, meta["BLOCK_C"]), triton.cdiv(max_taps, meta["BLOCK_T"]))

    with device_guard(x.device):
        _launch_inception(
            grad_output, dx, weights, (None, None, None), gc, square, band, transposed=True, layout=layout
        )
        _inception_wgrad[layout][grid](
            x,
            grad_output,
            partial,
            n_positions,
            per_program,
            h,
            w,
            channels,
            channels - 3 * gc,
            gc,
            square,
            band,
            *strides4(x),
            *strides4(grad_output),
            INT64=needs_int64(x, grad_output),
        )
    sums = partial.sum(1)
    grads = []
    for branch, wt in enumerate(weights):
        taps = wt.shape[2] * wt.shape[3]
        grads += [gradient(sums[branch, :, :taps], wt), gradient(sums[branch, :, taps], wt)]
    return (dx, *grads)


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered ops
# ----------------------------------------------------------------------------------------------------------------


def aot_specs() -> list:
    """Coverage compile specs of the mixer kernels (see :func:`zoo.kernels.dwconv._common.layout_specs`)."""
    pointers = ("src_ptr", "dst_ptr", "w_hw", "b_hw", "w_w", "b_w", "w_h", "b_h")
    return layout_specs(_inception_kernel, INCEPTION_CONFIGS, pointers, CONV_FLAGS) + layout_specs(
        _inception_wgrad_kernel, INCEPTION_WGRAD_CONFIGS, ("x_ptr", "dy_ptr", "partial_ptr"), [{}]
    )


def _branch_blocks(id_channels: int, gc: int, channels: int, block_c: int) -> list[int]:
    """Per conv branch, the channel blocks of the mixer whose aligned window meets the branch's slice (the
    others return at once): the programs that run the taps (see ``_branch_window``)."""
    counts = []
    for branch in (1, 2, 3):
        first = id_channels + (branch - 1) * gc
        start = (first // 8) * 8
        blocks = triton.cdiv(gc + 14, block_c)
        counts.append(
            sum(
                any(first <= ch < first + gc and ch < channels for ch in range(lo, lo + block_c))
                for lo in (start + j * block_c for j in range(blocks))
            )
        )
    return counts


def benchmark_specs() -> list:
    """Loop-report specs of the mixer kernels at InceptionNeXt-T's four stages (channels_last, as the models run
    it): forward, input gradient and weight gradient; the first stage is compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    layout, square, band = "channels_last", 3, 11
    branches = ((square, square), (1, band), (band, 1))  # (kh, kw) of the square, 1 x band and band x 1 branches
    for n, c, h in INCEPTION_BENCHMARKS:
        case = f"B{n}xC{c}x{h}x{h}"
        gc = c // 8
        id_channels = c - 3 * gc
        positions = n * h * h
        macs = sum(n * gc * taps_on_map(h, kh) * taps_on_map(h, kw) for kh, kw in branches)
        strides = meta_strides((n, c, h, h), layout)
        common = dict(n_positions=positions, H=h, W=h, C=c, id_channels=id_channels, gc=gc, square=square, band=band)
        ci = c == 96
        for config in INCEPTION_CONFIGS[layout]:
            block_p, block_c = config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"]
            active = _branch_blocks(id_channels, gc, c, block_c)
            programs = triton.cdiv(positions, block_p) * sum(active)
            runs_kh = sum(a * kh for a, (kh, _) in zip(active, branches, strict=True)) / sum(active)
            runs_taps = sum(a * kh * kw for a, (kh, kw) in zip(active, branches, strict=True)) / sum(active)
            work = Work(
                case,
                "MAC",
                macs / programs,
                (runs_kh, runs_taps / runs_kh),
                f"MACs = N gc (3x3 + 1x11 + 11x1 taps on map) = {macs}; programs = the conv-branch programs whose "
                f"window meets their slice: cdiv({positions}, {block_p}) x {sum(active)} ({active} per branch; "
                f"identity copies and empty windows excluded) = {programs}; loops: kh {runs_kh:g}, kw "
                f"{runs_taps / runs_kh:g} (means over those programs)",
            )
            label = f"P{block_p},C{block_c},w{config.num_warps}"
            for transposed, direction in ((False, "fwd"), (True, "bwd")):
                args = dict(
                    src_ptr="*bf16",
                    dst_ptr="*bf16",
                    **dict.fromkeys(("w_hw", "b_hw", "w_w", "b_w", "w_h", "b_h"), "*bf16"),
                    **common,
                    **named_strides(("s", "d"), strides),
                    TRANSPOSED=transposed,
                    HAS_BIAS=not transposed,
                    INT64=False,
                    **config.kwargs,
                )
                specs.append(
                    launch_spec(
                        f"_inception_kernel[bf16,{layout},{label},{direction}]@{case}",
                        _inception_kernel,
                        args,
                        num_warps=config.num_warps,
                        num_stages=config.num_stages,
                        work=work,
                        ci=ci,
                    )
                )
            ci = False
        max_taps = max(square * square, band)
        per_program = positions_per_program(positions, 3 * triton.cdiv(gc, 32) * triton.cdiv(max_taps, 8))
        chunks = triton.cdiv(positions, per_program)
        ci = c == 96
        for config in INCEPTION_WGRAD_CONFIGS[layout]:
            block_t, block_p, block_c = (config.kwargs[name] for name in WGRAD_TILE)
            active = _branch_blocks(id_channels, gc, c, block_c)
            tap_blocks = [triton.cdiv(kh * kw, block_t) for kh, kw in branches]
            programs = chunks * sum(a * t for a, t in zip(active, tap_blocks, strict=True))
            trips = average_trips(positions, per_program, block_p)
            work = Work(
                case,
                "MAC",
                macs / programs,
                (trips,),
                f"MACs = {macs} (as the forward); programs = {chunks} chunks x the (window, tap block) pairs that "
                f"have work ({active} windows, {tap_blocks} tap blocks per branch) = {programs}; loop over a "
                f"chunk's positions in steps of {block_p}: {trips:g}",
            )
            args = dict(
                x_ptr="*bf16",
                dy_ptr="*bf16",
                partial_ptr="*fp32",
                n_positions=positions,
                positions_per_program=per_program,
                **{name: value for name, value in common.items() if name != "n_positions"},
                **named_strides(("x", "g"), strides),
                INT64=False,
                **config.kwargs,
            )
            label = f"T{block_t},P{block_p},C{block_c},w{config.num_warps}"
            specs.append(
                launch_spec(
                    f"_inception_wgrad_kernel[bf16,{layout},{label}]@{case}",
                    _inception_wgrad_kernel,
                    args,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    work=work,
                    ci=ci,
                )
            )
            ci = False
    return specs
