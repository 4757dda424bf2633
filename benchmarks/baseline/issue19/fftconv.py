"""Long (FFT) convolution with a fused epilogue: the sequence mixer of S4/S4D, long convolutions, H3 and Hyena.

For u [B, H, L] and a per-channel kernel k (causal: [H, L'] with L' <= L, zero beyond; bidirectional:
[2, H, L']), optional skip D [H], activation ``"none"`` or ``"gelu"`` (exact, erf) and optional gates
``gate_in`` / ``gate_out`` [B, H, L]:

    v = u * gate_in                                   (v = u without gate_in)
    z[b, h, t] = sum_{0 <= d < L'} k[h, d] v[b, h, t - d] + D[h] v[b, h, t]           (causal)
    z[b, h, t] = sum_{0 <= d < L'} k[0, h, d] v[b, h, t - d]
               + sum_{0 <= m < L'} k[1, h, m] v[b, h, t + 1 + m] + D[h] v[b, h, t]   (bidirectional)
    y = act(z) * gate_out                             (y = act(z) without gate_out)

with v = 0 outside [0, L). The bidirectional form is state-spaces/s4's convention: the kernel
pad(k[0], (0, L)) + pad(k[1].flip(-1), (L, 0)) of length 2L, applied circularly with FFT length 2L (k[1] is
applied anti-causally, starting one step ahead). Any L works (not only powers of two).

The convolution runs as an FFT (torch.fft, float32) of length n >= 2L; everything around it is fused in Triton:
a prologue kernel (gate_in product, cast to float32), an epilogue kernel (slice [:L], + D v, activation,
gate_out, cast to the dtype of u), and in the backward one kernel for the epilogue's gradients (dz, d gate_out,
partial sums of dD per row: no atomics) and one for the input's (du, d gate_in, adding D dz); the kernel and
input gradients of the convolution itself are FFT correlations.

Short kernels (at most ``DIRECT_MAX_TAPS`` taps per side) take a direct path instead: the same epilogue kernels
sum the taps themselves (no FFT, no float32 buffers of length n in the forward), the input gradient kernel sums
the taps of the correlation, and one more kernel reduces the kernel gradient per row in registers (the batch sum
is a second pass). Both paths compute the same function; tests run both.

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels._backend import (
    INTERPRETER,
    TRITON_DTYPES,
    check_float_tensor,
    check_triton_device,
    check_triton_dtypes,
    device_guard,
    dispatch_triton,
    resolve_backend,
    tl,
    triton,
)

ACTIVATIONS = ("none", "gelu")

__all__ = [
    "fftconv",
    "fftconv_backward",
    "fftconv_forward",
    "fftconv_reference",
]


# ----------------------------------------------------------------------------------------------------------------
# Input checks (shared by the reference and the launchers)
# ----------------------------------------------------------------------------------------------------------------


def check_fftconv_inputs(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    bidirectional: bool,
    activation: str,
    gate_in: Tensor | None,
    gate_out: Tensor | None,
) -> int:
    """Raise ``TypeError``/``ValueError`` naming the expected shapes; return the kernel length L'."""
    check_float_tensor("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must be a 3-D tensor [B, H, L], got shape {list(u.shape)}")
    _, H, L = u.shape
    check_float_tensor("k", k)
    if bidirectional:
        if k.dim() != 3 or k.shape[0] != 2 or k.shape[1] != H:
            raise ValueError(
                f"bidirectional: k must have shape [2, H, L'] = [2, {H}, L'] with L' <= {L} "
                f"(k[0] causal, k[1] anti-causal), got {list(k.shape)}"
            )
    elif k.dim() != 2 or k.shape[0] != H:
        raise ValueError(f"k must have shape [H, L'] = [{H}, L'] with L' <= {L} (causal), got {list(k.shape)}")
    k_len = k.shape[-1]
    if not 1 <= k_len <= L:
        raise ValueError(f"the kernel length L' = {k_len} (k {list(k.shape)}) must be in [1, L = {L}]")
    if D is not None:
        check_float_tensor("D", D)
        if D.shape != (H,):
            raise ValueError(f"D must have shape [H] = [{H}], got {list(D.shape)}")
    for name, gate in (("gate_in", gate_in), ("gate_out", gate_out)):
        if gate is not None:
            check_float_tensor(name, gate)
            if gate.shape != u.shape:
                raise ValueError(f"{name} must have the shape of u [B, H, L] = {list(u.shape)}, got {list(gate.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    for name, t in (("k", k), ("D", D), ("gate_in", gate_in), ("gate_out", gate_out)):
        if t is not None and t.device != u.device:
            raise ValueError(f"{name} must be on the device of u ({u.device}), got {t.device}")
    return k_len


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def _full_kernel(k: Tensor, n: int, bidirectional: bool) -> Tensor:
    """The kernel laid out on the FFT length n: k[0 or only] at 0..L'-1, k[1] flipped at n - L'..n - 1."""
    if not bidirectional:
        return F.pad(k, (0, n - k.shape[-1]))
    return F.pad(k[0], (0, n - k.shape[-1])) + F.pad(k[1].flip(-1), (n - k.shape[-1], 0))


def fftconv_reference(
    u: Tensor,
    k: Tensor,
    D: Tensor | None = None,
    bidirectional: bool = False,
    activation: str = "none",
    gate_in: Tensor | None = None,
    gate_out: Tensor | None = None,
) -> Tensor:
    """FFT convolution with D skip, activation and gates in plain PyTorch (see the module docstring).

    Computes in float32 (float64 when u is float64) with FFT length 2L; returns the dtype of u."""
    check_fftconv_inputs(u, k, D, bidirectional, activation, gate_in, gate_out)
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    L = u.shape[-1]
    v = u.to(dtype) if gate_in is None else u.to(dtype) * gate_in.to(dtype)
    n = 2 * L
    kf = torch.fft.rfft(_full_kernel(k.to(dtype), n, bidirectional), n=n)
    z = torch.fft.irfft(torch.fft.rfft(v, n=n) * kf, n=n)[..., :L]
    if D is not None:
        z = z + D.to(dtype)[:, None] * v
    if activation == "gelu":
        z = F.gelu(z)
    if gate_out is not None:
        z = z * gate_out.to(dtype)
    return z.to(u.dtype)


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# Every kernel runs on a 2-D grid: axis 0 a row (b, h) of the [B, H, L] tensors, axis 1 a block of BLOCK_L
# positions. The FFT buffers are contiguous float32 [B, H, n] (n >= L + L': the zero padding is written by the
# kernels, so torch.fft does not copy); the other tensors are read with any strides.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _gelu_and_slope(z):
    """Exact GELU z Phi(z) and its derivative Phi(z) + z phi(z)."""
    cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
    pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
    return z * cdf, cdf + z * pdf


@triton.jit
def _row_offsets(r, H, s_b, s_h):
    """Offset of row r = b H + h of a tensor with batch and channel strides s_b, s_h (64-bit)."""
    r = r.to(tl.int64)
    return (r // H) * s_b + (r % H) * s_h


@triton.jit
def _load_v(u_ptr, gin_ptr, r, pos, mask, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN: tl.constexpr):
    """(v, u) in float32 at positions l of row r: v = u * gate_in (v = u without gate_in)."""
    u = tl.load(u_ptr + _row_offsets(r, H, su_b, su_h) + pos.to(tl.int64) * su_l, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE_IN:
        gin = tl.load(gin_ptr + _row_offsets(r, H, sgi_b, sgi_h) + pos.to(tl.int64) * sgi_l, mask=mask, other=0.0)
        return u * gin.to(tl.float32), u
    return u, u


@triton.jit
def _direct_conv(
    k_ptr,
    K_LEN,
    sk_c,
    sk_h,
    sk_l,
    u_ptr,
    gin_ptr,
    r,
    pos,
    mask,
    H,
    L,
    su_b,
    su_h,
    su_l,
    sgi_b,
    sgi_h,
    sgi_l,
    HAS_GATE_IN: tl.constexpr,
    BIDIRECTIONAL: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """The convolution at positions ``pos`` of row r computed tap by tap (the short-kernel path):
    sum_d k[h, d] v[pos - d] (+ sum_m k[1, h, m] v[pos + 1 + m] when bidirectional), float32."""
    k_row = k_ptr + (r % H).to(tl.int64) * sk_h
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for d in range(0, K_LEN):
        src = pos - d
        v, _ = _load_v(u_ptr, gin_ptr, r, src, mask & (src >= 0), H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
        acc += tl.load(k_row + d * sk_l).to(tl.float32) * v
    if BIDIRECTIONAL:
        for m in range(0, K_LEN):
            src = pos + 1 + m
            v, _ = _load_v(
                u_ptr, gin_ptr, r, src, mask & (src < L), H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN
            )
            acc += tl.load(k_row + sk_c + m * sk_l).to(tl.float32) * v
    return acc


@triton.jit
def _direct_correlation(
    k_ptr, K_LEN, sk_c, sk_h, sk_l, dz_ptr, r, pos, mask, H, L, n, BIDIRECTIONAL: tl.constexpr, BLOCK_L: tl.constexpr
):
    """The input gradient of :func:`_direct_conv` at positions ``pos`` of row r: sum_d k[h, d] dz[pos + d]
    (+ sum_m k[1, h, m] dz[pos - 1 - m] when bidirectional); dz is a contiguous float32 [rows, n] buffer."""
    k_row = k_ptr + (r % H).to(tl.int64) * sk_h
    dz_row = dz_ptr + r.to(tl.int64) * n
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for d in range(0, K_LEN):
        src = pos + d
        acc += tl.load(k_row + d * sk_l).to(tl.float32) * tl.load(dz_row + src, mask=mask & (src < L), other=0.0)
    if BIDIRECTIONAL:
        for m in range(0, K_LEN):
            src = pos - 1 - m
            g = tl.load(dz_row + src, mask=mask & (src >= 0), other=0.0)
            acc += tl.load(k_row + sk_c + m * sk_l).to(tl.float32) * g
    return acc


@triton.jit
def _fftconv_prologue_kernel(
    u_ptr,
    gin_ptr,
    v_ptr,
    H,
    L,
    n,
    su_b,
    su_h,
    su_l,
    sgi_b,
    sgi_h,
    sgi_l,
    HAS_GATE_IN: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """v_pad[r, l] = (u * gate_in)[r, l] in float32 for l < L, 0 for L <= l < n: the input of the rFFT."""
    r = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    v, _ = _load_v(u_ptr, gin_ptr, r, pos, pos < L, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
    tl.store(v_ptr + r.to(tl.int64) * n + pos, v, mask=pos < n)


@triton.jit
def _fftconv_fwd_kernel(
    conv_ptr,
    k_ptr,
    u_ptr,
    gin_ptr,
    gout_ptr,
    d_ptr,
    y_ptr,
    H,
    L,
    n,
    K_LEN,
    sk_c,
    sk_h,
    sk_l,
    su_b,
    su_h,
    su_l,
    sgi_b,
    sgi_h,
    sgi_l,
    sgo_b,
    sgo_h,
    sgo_l,
    HAS_D: tl.constexpr,
    HAS_GATE_IN: tl.constexpr,
    HAS_GATE_OUT: tl.constexpr,
    GELU: tl.constexpr,
    DIRECT: tl.constexpr,
    BIDIRECTIONAL: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """The epilogue: y = act(conv[:L] + D v) * gate_out, stored contiguous in the dtype of y. The conv comes from
    the FFT buffer, or with DIRECT from the taps of k (short kernels; conv_ptr unused)."""
    r = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = pos < L
    if DIRECT:
        z = _direct_conv(
            k_ptr,
            K_LEN,
            sk_c,
            sk_h,
            sk_l,
            u_ptr,
            gin_ptr,
            r,
            pos,
            mask,
            H,
            L,
            su_b,
            su_h,
            su_l,
            sgi_b,
            sgi_h,
            sgi_l,
            HAS_GATE_IN,
            BIDIRECTIONAL,
            BLOCK_L,
        )
    else:
        z = tl.load(conv_ptr + r.to(tl.int64) * n + pos, mask=mask, other=0.0)
    if HAS_D:
        v, _ = _load_v(u_ptr, gin_ptr, r, pos, mask, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
        z += tl.load(d_ptr + r % H).to(tl.float32) * v
    if GELU:
        z, _ = _gelu_and_slope(z)
    if HAS_GATE_OUT:
        gout = tl.load(gout_ptr + _row_offsets(r, H, sgo_b, sgo_h) + pos.to(tl.int64) * sgo_l, mask=mask, other=0.0)
        z *= gout.to(tl.float32)
    tl.store(y_ptr + r.to(tl.int64) * L + pos, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fftconv_bwd_epilogue_kernel(
    dy_ptr,
    conv_ptr,
    k_ptr,
    u_ptr,
    gin_ptr,
    gout_ptr,
    d_ptr,
    dz_ptr,
    dgout_ptr,
    dd_partial_ptr,
    H,
    L,
    n,
    K_LEN,
    sk_c,
    sk_h,
    sk_l,
    sdy_b,
    sdy_h,
    sdy_l,
    su_b,
    su_h,
    su_l,
    sgi_b,
    sgi_h,
    sgi_l,
    sgo_b,
    sgo_h,
    sgo_l,
    HAS_D: tl.constexpr,
    HAS_GATE_IN: tl.constexpr,
    HAS_GATE_OUT: tl.constexpr,
    GELU: tl.constexpr,
    DIRECT: tl.constexpr,
    BIDIRECTIONAL: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Gradients through the epilogue: dz (float32, zero-padded to n: the input of the rFFT of the backward),
    d gate_out = dy act(z) (contiguous, dtype of gate_out), and this block's sum of dz v (the D gradient) in
    ``dd_partial[r, block]``. The conv output is read (or, with DIRECT, recomputed from the taps) only where it is
    needed (GELU or gate_out)."""
    r = tl.program_id(0)
    block = tl.program_id(1)
    pos = block * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = pos < L
    g = tl.load(dy_ptr + _row_offsets(r, H, sdy_b, sdy_h) + pos.to(tl.int64) * sdy_l, mask=mask, other=0.0)
    g = g.to(tl.float32)
    if HAS_D or GELU or HAS_GATE_OUT:
        v, _ = _load_v(u_ptr, gin_ptr, r, pos, mask, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
    if GELU or HAS_GATE_OUT:
        if DIRECT:
            z = _direct_conv(
                k_ptr,
                K_LEN,
                sk_c,
                sk_h,
                sk_l,
                u_ptr,
                gin_ptr,
                r,
                pos,
                mask,
                H,
                L,
                su_b,
                su_h,
                su_l,
                sgi_b,
                sgi_h,
                sgi_l,
                HAS_GATE_IN,
                BIDIRECTIONAL,
                BLOCK_L,
            )
        else:
            z = tl.load(conv_ptr + r.to(tl.int64) * n + pos, mask=mask, other=0.0)
        if HAS_D:
            z += tl.load(d_ptr + r % H).to(tl.float32) * v
        if GELU:
            a, slope = _gelu_and_slope(z)
        else:
            a = z
        if HAS_GATE_OUT:
            gout = tl.load(gout_ptr + _row_offsets(r, H, sgo_b, sgo_h) + pos.to(tl.int64) * sgo_l, mask=mask, other=0.0)
            tl.store(dgout_ptr + r.to(tl.int64) * L + pos, (g * a).to(dgout_ptr.dtype.element_ty), mask=mask)
            g = g * gout.to(tl.float32)
        if GELU:
            g = g * slope
    tl.store(dz_ptr + r.to(tl.int64) * n + pos, g, mask=pos < n)  # g is 0 for L <= l < n
    if HAS_D:
        tl.store(dd_partial_ptr + r.to(tl.int64) * tl.num_programs(1) + block, tl.sum(g * v, axis=0))


@triton.jit
def _fftconv_bwd_input_kernel(
    dvc_ptr,
    dz_ptr,
    k_ptr,
    u_ptr,
    gin_ptr,
    d_ptr,
    du_ptr,
    dgin_ptr,
    H,
    L,
    n,
    K_LEN,
    sk_c,
    sk_h,
    sk_l,
    su_b,
    su_h,
    su_l,
    sgi_b,
    sgi_h,
    sgi_l,
    HAS_D: tl.constexpr,
    HAS_GATE_IN: tl.constexpr,
    DIRECT: tl.constexpr,
    BIDIRECTIONAL: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """dv = (correlation of dz with k)[:L] + D dz; du = dv * gate_in, d gate_in = dv * u (contiguous, in the
    dtypes of u and gate_in). The correlation comes from the FFT buffer, or with DIRECT from the taps of k."""
    r = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = pos < L
    row = r.to(tl.int64) * n
    if DIRECT:
        dv = _direct_correlation(k_ptr, K_LEN, sk_c, sk_h, sk_l, dz_ptr, r, pos, mask, H, L, n, BIDIRECTIONAL, BLOCK_L)
    else:
        dv = tl.load(dvc_ptr + row + pos, mask=mask, other=0.0)
    if HAS_D:
        dv += tl.load(d_ptr + r % H).to(tl.float32) * tl.load(dz_ptr + row + pos, mask=mask, other=0.0)
    if HAS_GATE_IN:
        u = tl.load(u_ptr + _row_offsets(r, H, su_b, su_h) + pos.to(tl.int64) * su_l, mask=mask, other=0.0)
        u = u.to(tl.float32)
        gin = tl.load(gin_ptr + _row_offsets(r, H, sgi_b, sgi_h) + pos.to(tl.int64) * sgi_l, mask=mask, other=0.0)
        tl.store(dgin_ptr + r.to(tl.int64) * L + pos, (dv * u).to(dgin_ptr.dtype.element_ty), mask=mask)
        dv = dv * gin.to(tl.float32)
    tl.store(du_ptr + r.to(tl.int64) * L + pos, dv.to(du_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _direct_dk_kernel(
    dz_ptr,
    u_ptr,
    gin_ptr,
    dk_partial_ptr,
    H,
    L,
    n,
    K_LEN,
    su_b,
    su_h,
    su_l,
    sgi_b,
    sgi_h,
    sgi_l,
    HAS_GATE_IN: tl.constexpr,
    BIDIRECTIONAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """The kernel gradient of the short-kernel path, for row r = b H + h and a block of BLOCK_D taps of one side
    (axis 1: causal blocks, then anti-causal ones): dk[d] = sum_t dz[t] v[t - d] (causal) or dz[t] v[t + 1 + d]
    (anti-causal), reduced over the row's positions in a [BLOCK_D, BLOCK_T] register tile and stored in
    ``dk_partial[r, side, d]`` (the batch sum is a second pass: no atomics)."""
    r = tl.program_id(0)
    n_blocks = tl.cdiv(K_LEN, BLOCK_D)
    side = tl.program_id(1) // n_blocks
    d = (tl.program_id(1) % n_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    shift = side + (2 * side - 1) * d  # v index = t + shift: t - d (causal), t + 1 + d (anti-causal)
    dz_row = dz_ptr + r.to(tl.int64) * n
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    for t0 in range(0, L, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        g = tl.load(dz_row + t, mask=t < L, other=0.0)
        src = t[None, :] + shift[:, None]
        valid = (d[:, None] < K_LEN) & (t[None, :] < L) & (src >= 0) & (src < L)
        v, _ = _load_v(u_ptr, gin_ptr, r, src, valid, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
        acc += v * g[None, :]
    n_sides = 2 if BIDIRECTIONAL else 1
    out = dk_partial_ptr + (r.to(tl.int64) * n_sides + side) * K_LEN + d
    tl.store(out, tl.sum(acc, axis=1), mask=d < K_LEN)


# Elementwise kernels: one block size per launch (BLOCK_L elements, num_warps chosen from it). Under the
# interpreter a tiny block, so odd test lengths span several blocks.
BLOCK_L_GPU, BLOCK_D_GPU = 1024, (32, 64)
BLOCK_L = 16 if INTERPRETER else BLOCK_L_GPU
NUM_WARPS = 1 if INTERPRETER else 4
# The kernel gradient of the short-kernel path: [BLOCK_D taps, BLOCK_T positions] register tiles.
BLOCK_D, BLOCK_T = (4, 8) if INTERPRETER else BLOCK_D_GPU

# Kernels of at most this many taps (per side) take the direct path (no FFT, no float32 [B, H, n] buffers): per
# output element it costs L' cached loads and FMAs, against the FFT path's ~30 bytes of DRAM traffic per element
# plus cuFFT's passes. The crossover is an estimate from the H100's L1 and DRAM bandwidths (~100 taps), taken
# conservatively; it has not been measured yet (scripts/benchmark.py --ops fftconv measures both paths).
DIRECT_MAX_TAPS = 64


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------


def _check_triton_inputs(u, k, D, bidirectional, activation, gate_in, gate_out) -> int:
    k_len = check_fftconv_inputs(u, k, D, bidirectional, activation, gate_in, gate_out)
    tensors = {"u": u, "k": k, "D": D, "gate_in": gate_in, "gate_out": gate_out}
    check_triton_dtypes("the Triton FFT convolution takes", tensors)
    check_triton_device(u.device)
    return k_len


def fft_length(L: int, k_len: int) -> int:
    """The FFT length: the smallest 2^a 3^b 5^c 7^d >= L + L' (no wrap-around into [0, L) for either the causal
    or the anti-causal part of the kernel)."""
    target = L + k_len
    best = 1 << (target - 1).bit_length()
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < best:
                p7 = p5
                while p7 < target:
                    p7 *= 7
                best = min(best, p7)
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


def _strides(t: Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else (t.stride(0), t.stride(1), t.stride(2))


def _kernel_spectrum(k: Tensor, n: int, bidirectional: bool) -> Tensor:
    return torch.fft.rfft(_full_kernel(k.float(), n, bidirectional), n=n)


def _input_spectrum(u: Tensor, gate_in: Tensor | None, n: int) -> Tensor:
    """rFFT of v = u * gate_in, zero-padded to n by the prologue kernel."""
    B, H, L = u.shape
    v = torch.empty((B, H, n), dtype=torch.float32, device=u.device)
    _fftconv_prologue_kernel[(B * H, triton.cdiv(n, BLOCK_L))](
        u,
        u if gate_in is None else gate_in,
        v,
        H,
        L,
        n,
        *_strides(u),
        *_strides(gate_in),
        HAS_GATE_IN=gate_in is not None,
        BLOCK_L=BLOCK_L,
        num_warps=NUM_WARPS,
    )
    return torch.fft.rfft(v)


def _kernel_strides(k: Tensor, bidirectional: bool) -> tuple[int, int, int]:
    """(side, channel, tap) strides of k (side 0 for a causal kernel)."""
    return (k.stride(0), k.stride(1), k.stride(2)) if bidirectional else (0, k.stride(0), k.stride(1))


def use_direct(k_len: int) -> bool:
    """Whether a kernel of k_len taps (per side) takes the direct path (see ``DIRECT_MAX_TAPS``)."""
    return k_len <= DIRECT_MAX_TAPS


def fftconv_forward(
    u: Tensor,
    k: Tensor,
    D: Tensor | None = None,
    bidirectional: bool = False,
    activation: str = "none",
    gate_in: Tensor | None = None,
    gate_out: Tensor | None = None,
    direct: bool | None = None,
) -> Tensor:
    """Triton forward of :func:`fftconv`. FFT path: prologue kernel, rFFT products (torch.fft, float32), epilogue
    kernel; direct path (``direct``; default: ``use_direct(L')``): one kernel, taps summed in registers. The output
    is contiguous, in the dtype of u."""
    k_len = _check_triton_inputs(u, k, D, bidirectional, activation, gate_in, gate_out)
    B, H, L = u.shape
    y = torch.empty((B, H, L), dtype=u.dtype, device=u.device)
    if y.numel() == 0:
        return y
    direct = use_direct(k_len) if direct is None else direct
    D = None if D is None else D.contiguous()  # the kernels read D[h] at unit stride
    with device_guard(u.device):
        if direct:
            n, conv = L, u  # conv_ptr is not read
        else:
            n = fft_length(L, k_len)
            conv = torch.fft.irfft(_input_spectrum(u, gate_in, n) * _kernel_spectrum(k, n, bidirectional), n=n)
        _fftconv_fwd_kernel[(B * H, triton.cdiv(L, BLOCK_L))](
            conv,
            k,
            u,
            u if gate_in is None else gate_in,
            u if gate_out is None else gate_out,
            u if D is None else D,
            y,
            H,
            L,
            n,
            k_len,
            *_kernel_strides(k, bidirectional),
            *_strides(u),
            *_strides(gate_in),
            *_strides(gate_out),
            HAS_D=D is not None,
            HAS_GATE_IN=gate_in is not None,
            HAS_GATE_OUT=gate_out is not None,
            GELU=activation == "gelu",
            DIRECT=direct,
            BIDIRECTIONAL=bidirectional,
            BLOCK_L=BLOCK_L,
            num_warps=NUM_WARPS,
        )
    return y


def _empty_grad(t: Tensor | None, like: Tensor) -> Tensor:
    """The gradient slot of an absent optional input: an empty tensor (the registered op returns tensors only)."""
    return like.new_empty(0) if t is None else torch.empty(t.shape, dtype=t.dtype, device=t.device)


def fftconv_backward(
    grad_output: Tensor,
    u: Tensor,
    k: Tensor,
    D: Tensor | None = None,
    bidirectional: bool = False,
    activation: str = "none",
    gate_in: Tensor | None = None,
    gate_out: Tensor | None = None,
    direct: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward of :func:`fftconv`: (du, dk, dD, d gate_in, d gate_out) in the dtypes of the inputs; the
    gradient of an absent input (D, a gate) is an empty tensor.

    The epilogue's gradients come from one kernel (recomputing the conv output only for GELU or gate_out), the
    input's from another. FFT path: the conv parts of dv and dk are FFT correlations (torch.fft, float32). Direct
    path (``direct``; default: ``use_direct(L')``): dv sums the taps in the input kernel and dk is reduced per row
    in registers, then over the batch."""
    k_len = _check_triton_inputs(u, k, D, bidirectional, activation, gate_in, gate_out)
    check_float_tensor("grad_output", grad_output)
    if grad_output.shape != u.shape or grad_output.device != u.device:
        raise ValueError(
            f"grad_output must have the output's shape {list(u.shape)} on {u.device}, got "
            f"{list(grad_output.shape)} on {grad_output.device}"
        )
    B, H, L = u.shape
    du = torch.empty((B, H, L), dtype=u.dtype, device=u.device)
    d_gate_in, d_gate_out = _empty_grad(gate_in, u), _empty_grad(gate_out, u)
    if du.numel() == 0:
        zeros_d = torch.zeros_like(D) if D is not None else u.new_empty(0)
        return du, torch.zeros_like(k), zeros_d, d_gate_in, d_gate_out
    direct = use_direct(k_len) if direct is None else direct
    D = None if D is None else D.contiguous()  # the kernels read D[h] at unit stride
    n = L if direct else fft_length(L, k_len)
    needs_conv = activation == "gelu" or gate_out is not None
    grid = (B * H, triton.cdiv(L, BLOCK_L))
    gin = u if gate_in is None else gate_in
    k_args = (k_len, *_kernel_strides(k, bidirectional))
    flags = dict(HAS_D=D is not None, HAS_GATE_IN=gate_in is not None, DIRECT=direct, BIDIRECTIONAL=bidirectional)
    with device_guard(u.device):
        if direct:
            conv = u  # not read: the epilogue kernel recomputes the taps where it needs them
        else:
            v_f = _input_spectrum(u, gate_in, n)
            k_f = _kernel_spectrum(k, n, bidirectional)
            conv = torch.fft.irfft(v_f * k_f, n=n) if needs_conv else u
        dz = torch.empty((B, H, n), dtype=torch.float32, device=u.device)
        dd_partial = torch.empty((B * H, triton.cdiv(n, BLOCK_L)), dtype=torch.float32, device=u.device)
        _fftconv_bwd_epilogue_kernel[(B * H, triton.cdiv(n, BLOCK_L))](
            grad_output,
            conv,
            k,
            u,
            gin,
            u if gate_out is None else gate_out,
            u if D is None else D,
            dz,
            d_gate_out if gate_out is not None else dz,
            dd_partial,
            H,
            L,
            n,
            *k_args,
            *_strides(grad_output),
            *_strides(u),
            *_strides(gate_in),
            *_strides(gate_out),
            **flags,
            HAS_GATE_OUT=gate_out is not None,
            GELU=activation == "gelu",
            BLOCK_L=BLOCK_L,
            num_warps=NUM_WARPS,
        )
        if direct:
            dv_conv = dz  # not read
            sides = 2 if bidirectional else 1
            dk_partial = torch.empty((B, H, sides, k_len), dtype=torch.float32, device=u.device)
            _direct_dk_kernel[(B * H, sides * triton.cdiv(k_len, BLOCK_D))](
                dz,
                u,
                gin,
                dk_partial,
                H,
                L,
                n,
                k_len,
                *_strides(u),
                *_strides(gate_in),
                HAS_GATE_IN=gate_in is not None,
                BIDIRECTIONAL=bidirectional,
                BLOCK_D=BLOCK_D,
                BLOCK_T=BLOCK_T,
                num_warps=NUM_WARPS,
            )
            dk_sides = dk_partial.sum(0)  # [H, sides, L']
            dk = dk_sides.permute(1, 0, 2).contiguous() if bidirectional else dk_sides[:, 0]
        else:
            dz_f = torch.fft.rfft(dz)  # physical conjugates below: lazy conj() views break under AOTAutograd
            dv_conv = torch.fft.irfft(dz_f * k_f.conj_physical(), n=n)
            dk_full = torch.fft.irfft((dz_f * v_f.conj_physical()).sum(0), n=n)
            if bidirectional:
                dk = torch.stack((dk_full[:, :k_len], dk_full[:, n - k_len :].flip(-1)))
            else:
                dk = dk_full[:, :k_len]
        _fftconv_bwd_input_kernel[grid](
            dv_conv,
            dz,
            k,
            u,
            gin,
            u if D is None else D,
            du,
            d_gate_in if gate_in is not None else du,
            H,
            L,
            n,
            *k_args,
            *_strides(u),
            *_strides(gate_in),
            **flags,
            BLOCK_L=BLOCK_L,
            num_warps=NUM_WARPS,
        )
    dk = dk.to(k.dtype, copy=True)
    dD = dd_partial.view(B, H, -1).sum((0, 2)).to(D.dtype) if D is not None else u.new_empty(0)
    return du, dk, dD, d_gate_in, d_gate_out


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered ops
# ----------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("zoo::fftconv", mutates_args=())
def _fftconv_op(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    gate_in: Tensor | None,
    gate_out: Tensor | None,
    bidirectional: bool,
    activation: str,
) -> Tensor:
    return fftconv_forward(u, k, D, bidirectional, activation, gate_in, gate_out)


@_fftconv_op.register_fake
def _(u, k, D, gate_in, gate_out, bidirectional, activation) -> Tensor:
    check_fftconv_inputs(u, k, D, bidirectional, activation, gate_in, gate_out)
    return u.new_empty(u.shape)


@torch.library.custom_op("zoo::fftconv_backward", mutates_args=())
def _fftconv_backward_op(
    grad_output: Tensor,
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    gate_in: Tensor | None,
    gate_out: Tensor | None,
    bidirectional: bool,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return fftconv_backward(grad_output, u, k, D, bidirectional, activation, gate_in, gate_out)


@_fftconv_backward_op.register_fake
def _(grad_output, u, k, D, gate_in, gate_out, bidirectional, activation):
    d_D = u.new_empty(0) if D is None else D.new_empty(D.shape)
    return u.new_empty(u.shape), k.new_empty(k.shape), d_D, _empty_grad(gate_in, u), _empty_grad(gate_out, u)


def _grads_of_present(grads, D, gate_in, gate_out):
    du, dk, dD, d_gate_in, d_gate_out = grads
    return (
        du,
        dk,
        None if D is None else dD,
        None if gate_in is None else d_gate_in,
        None if gate_out is None else d_gate_out,
    )


def _setup_context(ctx, inputs, output) -> None:
    u, k, D, gate_in, gate_out, bidirectional, activation = inputs
    ctx.save_for_backward(u, k, D, gate_in, gate_out)
    ctx.bidirectional, ctx.activation = bidirectional, activation


def _backward(ctx, grad_output: Tensor):
    u, k, D, gate_in, gate_out = ctx.saved_tensors
    grads = torch.ops.zoo.fftconv_backward(grad_output, u, k, D, gate_in, gate_out, ctx.bidirectional, ctx.activation)
    return (*_grads_of_present(grads, D, gate_in, gate_out), None, None)


_fftconv_op.register_autograd(_backward, setup_context=_setup_context)


def _fftconv_forward_in_op_order(u, k, D, gate_in, gate_out, bidirectional, activation) -> Tensor:
    """:func:`fftconv_forward` with the arguments in the order of ``zoo::fftconv`` (for :func:`dispatch_triton`)."""
    return fftconv_forward(u, k, D, bidirectional, activation, gate_in, gate_out)


class _FFTConvFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers are called directly (fewer dispatches per call);
    ``torch.compile`` traces the registered op ``zoo::fftconv``; both run the same launchers."""

    @staticmethod
    def forward(ctx, u, k, D, gate_in, gate_out, bidirectional, activation):
        ctx.save_for_backward(u, k, D, gate_in, gate_out)
        ctx.bidirectional, ctx.activation = bidirectional, activation
        return fftconv_forward(u, k, D, bidirectional, activation, gate_in, gate_out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        u, k, D, gate_in, gate_out = ctx.saved_tensors
        grads = fftconv_backward(grad_output, u, k, D, ctx.bidirectional, ctx.activation, gate_in, gate_out)
        return (*_grads_of_present(grads, D, gate_in, gate_out), None, None)


def fftconv(
    u: Tensor,
    k: Tensor,
    D: Tensor | None = None,
    *,
    bidirectional: bool = False,
    activation: str = "none",
    gate_in: Tensor | None = None,
    gate_out: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """y = act((v conv k)[..., :L] + D v) * gate_out with v = u * gate_in (see the module docstring).

    Args:
        u: ``[B, H, L]`` float32/bfloat16/float16 (float64 on the reference backend), any strides, any L.
        k: causal ``[H, L']`` or, with ``bidirectional=True``, ``[2, H, L']`` (k[0] causal, k[1] anti-causal);
            L' <= L, zero beyond.
        D: ``[H]`` skip or None. activation: ``"none"`` or ``"gelu"`` (exact erf GELU).
        gate_in, gate_out: ``[B, H, L]`` or None (H3/Hyena gating).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`).

    Returns:
        ``[B, H, L]`` in the dtype of u (the FFT, or the direct sum for short kernels, runs in float32);
        differentiable in every tensor argument.
    """
    check_float_tensor("u", u)
    if resolve_backend(backend, u, TRITON_DTYPES) == "triton":  # the launchers validate their inputs
        return dispatch_triton(
            u,
            k,
            D,
            gate_in,
            gate_out,
            bidirectional,
            activation,
            op=torch.ops.zoo.fftconv,
            function=_FFTConvFunction,
            launcher=_fftconv_forward_in_op_order,
        )
    return fftconv_reference(u, k, D, bidirectional, activation, gate_in, gate_out)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------


def aot_specs() -> list:
    """Compile specs (zoo/kernels/_aot.py): the five kernels at the GPU block sizes, for u (and gates, outputs) in bf16,
    fp32 and fp16, with every optional part on (D, both gates, GELU, bidirectional) and off, at the launch-time
    specialisations of contiguous [B, H, L] tensors (H, L, n and the row strides multiples of 16, unit stride a
    constant); the epilogue kernels in their FFT and direct forms; and for bf16 once more with arbitrary sizes and
    strides. The kernel k and the float32 buffers are float32 pointers."""
    from zoo.kernels._aot import KernelSpec

    kernels = (
        _fftconv_prologue_kernel,
        _fftconv_fwd_kernel,
        _fftconv_bwd_epilogue_kernel,
        _fftconv_bwd_input_kernel,
        _direct_dk_kernel,
    )
    fp32_buffers = {"v_ptr", "conv_ptr", "dz_ptr", "dvc_ptr", "dd_partial_ptr", "dk_partial_ptr", "d_ptr", "k_ptr"}
    blocks = {"BLOCK_L": BLOCK_L_GPU, "BLOCK_D": BLOCK_D_GPU[0], "BLOCK_T": BLOCK_D_GPU[1]}
    specs = []
    for kernel in kernels:
        flag_names = [name for name in kernel.arg_names if name.startswith(("HAS_", "GELU", "BIDIRECTIONAL"))]
        variants = [(dtype, on, False, False) for dtype in ("bf16", "fp32", "fp16") for on in (True, False)]
        variants.append(("bf16", True, True, False))
        if "DIRECT" in kernel.arg_names:
            variants += [
                ("bf16", True, False, True),
                ("fp32", True, False, True),
                ("bf16", False, False, True),
                ("bf16", True, True, True),
            ]
        for dtype, on, strided, direct in variants:
            constexprs = dict.fromkeys(flag_names, on)
            constexprs.update({name: value for name, value in blocks.items() if name in kernel.arg_names})
            if "DIRECT" in kernel.arg_names:
                constexprs["DIRECT"] = direct
            signature = {}
            for name in kernel.arg_names:
                if name in constexprs:
                    continue
                if name.endswith("_ptr"):
                    signature[name] = "*fp32:16" if name in fp32_buffers else f"*{dtype}:16"
                elif strided:
                    signature[name] = "i32"
                elif name.endswith("_l"):
                    signature[name] = "i32:1"
                else:
                    signature[name] = "i32:16"
            label = ("all" if on else "plain") + (",direct" if direct else "") + (",strided" if strided else "")
            block = ",".join(f"{name[6:]}{constexprs[name]}" for name in blocks if name in constexprs)
            specs.append(
                KernelSpec(
                    name=f"{kernel.__name__}[{dtype},{block},w4,{label}]",
                    fn=kernel,
                    signature=signature,
                    constexprs=constexprs,
                    num_warps=4,
                )
            )
    return specs + benchmark_specs()


# The benchmarked shapes (scripts/benchmark.py: fftconv_cases), u in bf16, causal, D skip, GELU:
# (B, H, L, kernel length, gated)
FFTCONV_BENCHMARKS = (
    tuple((32, 768, L, L, False) for L in (1024, 2048, 4096, 8192, 16384))
    + tuple((64, 768, L, L, True) for L in (1024, 4096))
    + tuple((32, 768, 4096, k, False) for k in (4, 64, 128))
)


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops): the kernels each benchmarked call launches (forward:
    prologue and epilogue, or the direct epilogue; backward: prologue, the two epilogue kernels and, direct, the
    kernel gradient), with the arguments the launchers pass (contiguous u, gates, dy; float32 k and D) and the
    useful work of a program: the elements of u (the FFT path's elementwise kernels; the zero padding up to the
    FFT length is cost), or the multiply-adds of the taps that land on the sequence (direct path:
    B H sum_t min(t + 1, L')). The first case's forward epilogue and the K = 4 case's direct forward are
    compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    for B, H, L, k_len, gated in FFTCONV_BENCHMARKS:
        case = f"B{B}xH{H}xL{L}" + (f"xK{k_len}" if k_len != L else "") + ("-gated" if gated else "")
        direct = use_direct(k_len)
        n = L if direct else fft_length(L, k_len)
        rows, elements = B * H, B * H * L
        macs = B * H * sum(min(t + 1, k_len) for t in range(L))
        contiguous = (H * L, L, 1)
        gates = contiguous if gated else (0, 0, 0)
        values = dict(
            H=H,
            L=L,
            n=n,
            K_LEN=k_len,
            **dict(zip(("sk_c", "sk_h", "sk_l"), (0, k_len, 1), strict=True)),
            **{f"{prefix}_{axis}": s for prefix in ("su", "sdy") for axis, s in zip("bhl", contiguous, strict=True)},
            **{f"{prefix}_{axis}": s for prefix in ("sgi", "sgo") for axis, s in zip("bhl", gates, strict=True)},
            HAS_D=True,
            HAS_GATE_IN=gated,
            HAS_GATE_OUT=gated,
            GELU=True,
            DIRECT=direct,
            BIDIRECTIONAL=False,
            BLOCK_L=BLOCK_L_GPU,
            BLOCK_D=BLOCK_D_GPU[0],
            BLOCK_T=BLOCK_D_GPU[1],
            **dict.fromkeys(("u_ptr", "gin_ptr", "gout_ptr", "y_ptr", "dy_ptr", "du_ptr"), "*bf16"),
            **dict.fromkeys(("k_ptr", "d_ptr", "v_ptr", "dz_ptr", "dd_partial_ptr", "dk_partial_ptr"), "*fp32"),
            conv_ptr="*bf16" if direct else "*fp32",  # the direct path passes u (not read)
            dvc_ptr="*fp32",
            dgout_ptr="*bf16" if gated else "*fp32",
            dgin_ptr="*bf16",
        )
        position_blocks, padded_blocks = triton.cdiv(L, BLOCK_L_GPU), triton.cdiv(n, BLOCK_L_GPU)
        launches = []  # (kernel, programs, units, unit, trips, what a program does)
        if not direct:
            launches.append((_fftconv_prologue_kernel, rows * padded_blocks, elements, "element", ()))
        for kernel, blocks in (
            (_fftconv_fwd_kernel, position_blocks),
            (_fftconv_bwd_epilogue_kernel, padded_blocks),
            (_fftconv_bwd_input_kernel, position_blocks),
        ):
            launches.append(
                (
                    kernel,
                    rows * blocks,
                    macs if direct else elements,
                    "MAC" if direct else "element",
                    (k_len,) if direct else (),
                )
            )
        if direct:
            dk_programs = rows * triton.cdiv(k_len, BLOCK_D_GPU[0])
            launches.append((_direct_dk_kernel, dk_programs, macs, "MAC", (triton.cdiv(L, BLOCK_D_GPU[1]),)))
        for kernel, programs, units, unit, trips in launches:
            names = {p.name for p in kernel.params}
            formula = f"MACs = B H sum_t min(t + 1, L') = {macs}" if unit == "MAC" else f"elements = B H L = {units}"
            formula += f"; programs = {programs}" + (f"; loop trips {trips[0]}" if trips else "; no loop")
            label = "bf16,D,gelu" + (",gated" if gated else "") + (",direct" if direct else "")
            specs.append(
                launch_spec(
                    f"{kernel.__name__}[{label}]@{case}",
                    kernel,
                    {name: value for name, value in values.items() if name in names},
                    num_warps=4,
                    work=Work(case, unit, units / programs, trips, formula),
                    ci=(case == "B32xH768xL1024" and kernel is _fftconv_fwd_kernel)
                    or (k_len == 4 and kernel is _fftconv_fwd_kernel),
                )
            )
    return specs
