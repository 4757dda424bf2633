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

The convolution runs as an FFT (torch.fft, float32) of length n >= L + L'; everything around it is fused in
Triton, so that a call launches at most three kernels or ATen ops each way besides one rFFT and one inverse FFT
(issue 21; tests/kernels/test_launch_counts.py):

* forward: a prologue kernel writes v = u * gate_in and the kernel, both zero-padded to n, into one float32
  buffer [B H + H, n]; one rFFT of it; one complex product (broadcast over the batch); the inverse FFT; the
  epilogue kernel (slice [:L], + D v, activation, gate_out, cast to the dtype of u), which also stores the
  pre-activation z (float32) when GELU or gate_out will need it in the backward (the backward never recomputes
  the convolution);
* backward: one kernel writes dz (the epilogue's gradient, also d gate_out) and again v and the padded kernel
  into one buffer [2 B H + H, n]; one rFFT; a spectral kernel forms dZ conj(K) per row and sum_b dZ conj(V) per
  channel (the batch sum in registers); one inverse FFT; one kernel writes du, d gate_in (adding D dz), dk (the
  correlation's taps, cast to the dtype of k) and dD, which is the kernel gradient at lag 0 (sum_t dz v): no
  reduction of its own.

Short kernels (at most ``DIRECT_MAX_TAPS`` taps per side) take a direct path instead: the epilogue kernel sums
the taps itself (one launch, no FFT, no float32 buffers of length n); the backward is the epilogue-gradient
kernel and one kernel whose first programs sum the taps of the input gradient and whose last programs reduce the
kernel gradient (and dD, its causal tap 0) over the batch and the positions in registers (deterministic, no
second pass). Both paths compute the same function; tests run both.

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
    cdiv,
    check_float_tensor,
    check_triton_device,
    check_triton_dtypes,
    device_guard,
    dispatch_triton,
    launchable,
    next_power_of_2,
    once_differentiable,
    resolve_backend,
    tl,
    triton,
    triton_op,
)
from zoo.kernels._gelu import gelu, gelu_and_slope

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
# The elementwise kernels run on a 2-D grid: axis 0 a row (b, h) of the [B, H, L] tensors (or of a buffer that
# stacks several such row sets), axis 1 a block of BLOCK_L positions; the backward's last kernel on a 1-D grid of
# two program ranges. The FFT buffers are contiguous float32 [rows, n] (n >= L + L': the zero padding is written
# by the kernels, so torch.fft does not copy); the other tensors are read with any strides.
# ----------------------------------------------------------------------------------------------------------------


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
def _padded_kernel_row(k_ptr, h, pos, n, K_LEN, sk_c, sk_h, sk_l, BIDIRECTIONAL: tl.constexpr):
    """The kernel of channel h laid out on the FFT length n (as :func:`_full_kernel`) at positions ``pos``:
    k[0 or only][pos] for pos < L', plus k[1][n - 1 - pos] for pos >= n - L' when bidirectional; float32."""
    row = k_ptr + h.to(tl.int64) * sk_h
    val = tl.load(row + pos * sk_l, mask=pos < K_LEN, other=0.0).to(tl.float32)
    if BIDIRECTIONAL:
        m = n - 1 - pos
        val += tl.load(row + sk_c + m * sk_l, mask=(m >= 0) & (m < K_LEN), other=0.0).to(tl.float32)
    return val


@triton.jit
def _fftconv_prologue_kernel(
    u_ptr,
    gin_ptr,
    k_ptr,
    buf_ptr,
    BH,
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
    HAS_GATE_IN: tl.constexpr,
    BIDIRECTIONAL: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """The input of the forward's one rFFT, a float32 [B H + H, n] buffer: rows r < B H hold v = u * gate_in
    zero-padded to n, rows B H + h the kernel of channel h on the FFT length (:func:`_padded_kernel_row`)."""
    r = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    if r < BH:
        val, _ = _load_v(u_ptr, gin_ptr, r, pos, pos < L, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
    else:
        val = _padded_kernel_row(k_ptr, r - BH, pos, n, K_LEN, sk_c, sk_h, sk_l, BIDIRECTIONAL)
    tl.store(buf_ptr + r.to(tl.int64) * n + pos, val, mask=pos < n)


@triton.jit
def _fftconv_fwd_kernel(
    conv_ptr,
    k_ptr,
    u_ptr,
    gin_ptr,
    gout_ptr,
    d_ptr,
    y_ptr,
    z_ptr,
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
    STORE_Z: tl.constexpr,
    BLOCK_L: tl.constexpr,
    APPROX: tl.constexpr,
):
    """The epilogue: y = act(z) * gate_out with z = conv[:L] + D v, stored contiguous in the dtype of y; with
    STORE_Z also z (float32 [B, H, L], for the backward of GELU / gate_out). The conv comes from the FFT buffer
    (row stride n), or with DIRECT from the taps of k (short kernels; conv_ptr unused)."""
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
    if STORE_Z:
        tl.store(z_ptr + r.to(tl.int64) * L + pos, z, mask=mask)
    if GELU:
        z = gelu(z, APPROX)
    if HAS_GATE_OUT:
        gout = tl.load(gout_ptr + _row_offsets(r, H, sgo_b, sgo_h) + pos.to(tl.int64) * sgo_l, mask=mask, other=0.0)
        z *= gout.to(tl.float32)
    tl.store(y_ptr + r.to(tl.int64) * L + pos, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fftconv_bwd_epilogue_kernel(
    dy_ptr,
    z_ptr,
    k_ptr,
    u_ptr,
    gin_ptr,
    gout_ptr,
    d_ptr,
    buf_ptr,
    dgout_ptr,
    BH,
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
    HAS_Z: tl.constexpr,
    DIRECT: tl.constexpr,
    BIDIRECTIONAL: tl.constexpr,
    BLOCK_L: tl.constexpr,
    APPROX: tl.constexpr,
):
    """The first kernel of the backward. Rows r < B H: the gradients through the epilogue, dz (float32, zero-padded
    to n, row r of ``buf``) and d gate_out = dy act(z) (contiguous, dtype of gate_out). The pre-activation z is
    needed only for GELU or gate_out: read from the forward's z (HAS_Z) or, DIRECT, recomputed from the taps.
    FFT path (not DIRECT): rows B H + r hold v of row r zero-padded, rows 2 B H + h the kernel of channel h on the
    FFT length, so that one rFFT of ``buf`` [2 B H + H, n] gives every spectrum the backward needs."""
    r = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = pos < L
    if r < BH:
        g = tl.load(dy_ptr + _row_offsets(r, H, sdy_b, sdy_h) + pos.to(tl.int64) * sdy_l, mask=mask, other=0.0)
        g = g.to(tl.float32)
        if GELU or HAS_GATE_OUT:
            if HAS_Z:
                z = tl.load(z_ptr + r.to(tl.int64) * L + pos, mask=mask, other=0.0)
            else:
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
                if HAS_D:
                    v, _ = _load_v(u_ptr, gin_ptr, r, pos, mask, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
                    z += tl.load(d_ptr + r % H).to(tl.float32) * v
            if GELU:
                a, slope = gelu_and_slope(z, APPROX)
            else:
                a = z
            if HAS_GATE_OUT:
                gout = tl.load(
                    gout_ptr + _row_offsets(r, H, sgo_b, sgo_h) + pos.to(tl.int64) * sgo_l, mask=mask, other=0.0
                )
                tl.store(dgout_ptr + r.to(tl.int64) * L + pos, (g * a).to(dgout_ptr.dtype.element_ty), mask=mask)
                g = g * gout.to(tl.float32)
            if GELU:
                g = g * slope
        tl.store(buf_ptr + r.to(tl.int64) * n + pos, g, mask=pos < n)  # g is 0 for L <= l < n
    elif not DIRECT:
        if r < 2 * BH:
            val, _ = _load_v(u_ptr, gin_ptr, r - BH, pos, mask, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
        else:
            val = _padded_kernel_row(k_ptr, r - 2 * BH, pos, n, K_LEN, sk_c, sk_h, sk_l, BIDIRECTIONAL)
        tl.store(buf_ptr + r.to(tl.int64) * n + pos, val, mask=pos < n)


@triton.jit
def _fftconv_bwd_spectral_kernel(
    spec_ptr,
    out_ptr,
    B,
    H,
    F,
    BLOCK_F: tl.constexpr,
):
    """The products of the backward in the frequency domain for channel h (axis 0) and BLOCK_F frequencies (axis 1),
    complex numbers as float32 (re, im) pairs. ``spec`` [2 B H + H, F] holds the spectra of dz (rows b H + h), v
    (rows B H + b H + h) and the padded kernel (rows 2 B H + h); this writes ``out`` [B H + H, F]: rows b H + h
    dV = dZ conj(K) (the input gradient's correlation), rows B H + h dK = sum_b dZ conj(V) (the kernel gradient's,
    the batch sum in registers: deterministic, no atomics)."""
    h = tl.program_id(0)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    offs = f[:, None] * 2 + tl.arange(0, 2)[None, :]
    fmask = (f < F)[:, None]
    BH = B * H
    row = 2 * F  # floats per spectrum row
    kr, ki = tl.split(tl.load(spec_ptr + (2 * BH + h).to(tl.int64) * row + offs, mask=fmask, other=0.0))
    acc_r = tl.zeros([BLOCK_F], dtype=tl.float32)
    acc_i = tl.zeros([BLOCK_F], dtype=tl.float32)
    for b in range(0, B):
        r = (b * H + h).to(tl.int64)
        gr, gi = tl.split(tl.load(spec_ptr + r * row + offs, mask=fmask, other=0.0))
        vr, vi = tl.split(tl.load(spec_ptr + (BH + r) * row + offs, mask=fmask, other=0.0))
        tl.store(out_ptr + r * row + offs, tl.join(gr * kr + gi * ki, gi * kr - gr * ki), mask=fmask)
        acc_r += gr * vr + gi * vi
        acc_i += gi * vr - gr * vi
    tl.store(out_ptr + (BH + h).to(tl.int64) * row + offs, tl.join(acc_r, acc_i), mask=fmask)


@triton.jit
def _fftconv_bwd_input_kernel(
    corr_ptr,
    dz_ptr,
    k_ptr,
    u_ptr,
    gin_ptr,
    d_ptr,
    du_ptr,
    dgin_ptr,
    dk_ptr,
    dd_ptr,
    B,
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
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """The last kernel of the backward, on a 1-D grid of two program ranges.

    Programs [0, B H cdiv(L, BLOCK_L)), one per (row r, block of positions): dv = (correlation of dz with k)[:L]
    + D dz; du = dv * gate_in, d gate_in = dv * u (contiguous, in the dtypes of u and gate_in). The correlation is
    row r of the inverse FFT ``corr`` (row stride n), or with DIRECT summed from the taps of k.

    The programs after them write the kernel gradient dk (contiguous, dtype of k; [2, H, L'] when bidirectional)
    and dD (dtype of D) = the correlation of dz and v at lag 0, the causal tap 0 of dk. FFT path: one program per
    (h, block of BLOCK_L taps) reads row B H + h of ``corr`` (the batch-summed correlation; the anti-causal side
    lies flipped at the end). DIRECT: one per (h, side, block of BLOCK_D taps), reducing dz[t] v[t - d] (causal)
    or dz[t] v[t + 1 + d] (anti-causal) over every b and t in a [BLOCK_D, BLOCK_T] register tile (deterministic)."""
    pid = tl.program_id(0)
    l_blocks = tl.cdiv(L, BLOCK_L)
    input_programs = B * H * l_blocks
    if pid < input_programs:
        r = pid // l_blocks
        pos = (pid % l_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)
        mask = pos < L
        row = r.to(tl.int64) * n
        if DIRECT:
            dv = _direct_correlation(
                k_ptr, K_LEN, sk_c, sk_h, sk_l, dz_ptr, r, pos, mask, H, L, n, BIDIRECTIONAL, BLOCK_L
            )
        else:
            dv = tl.load(corr_ptr + row + pos, mask=mask, other=0.0)
        if HAS_D:
            dv += tl.load(d_ptr + r % H).to(tl.float32) * tl.load(dz_ptr + row + pos, mask=mask, other=0.0)
        if HAS_GATE_IN:
            u = tl.load(u_ptr + _row_offsets(r, H, su_b, su_h) + pos.to(tl.int64) * su_l, mask=mask, other=0.0)
            u = u.to(tl.float32)
            gin = tl.load(gin_ptr + _row_offsets(r, H, sgi_b, sgi_h) + pos.to(tl.int64) * sgi_l, mask=mask, other=0.0)
            tl.store(dgin_ptr + r.to(tl.int64) * L + pos, (dv * u).to(dgin_ptr.dtype.element_ty), mask=mask)
            dv = dv * gin.to(tl.float32)
        tl.store(du_ptr + r.to(tl.int64) * L + pos, dv.to(du_ptr.dtype.element_ty), mask=mask)
    else:
        q = pid - input_programs
        side_plane = H * K_LEN  # dk[1] starts here when bidirectional
        if DIRECT:
            d_blocks = tl.cdiv(K_LEN, BLOCK_D)
            n_sides = 2 if BIDIRECTIONAL else 1
            h = q // (n_sides * d_blocks)
            side = (q // d_blocks) % n_sides
            block = q % d_blocks
            d = block * BLOCK_D + tl.arange(0, BLOCK_D)
            shift = side + (2 * side - 1) * d  # v index = t + shift: t - d (causal), t + 1 + d (anti-causal)
            acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
            for b in range(0, B):
                r = b * H + h
                dz_row = dz_ptr + r.to(tl.int64) * n
                for t0 in range(0, L, BLOCK_T):
                    t = t0 + tl.arange(0, BLOCK_T)
                    g = tl.load(dz_row + t, mask=t < L, other=0.0)
                    src = t[None, :] + shift[:, None]
                    valid = (d[:, None] < K_LEN) & (t[None, :] < L) & (src >= 0) & (src < L)
                    v, _ = _load_v(u_ptr, gin_ptr, r, src, valid, H, su_b, su_h, su_l, sgi_b, sgi_h, sgi_l, HAS_GATE_IN)
                    acc += v * g[None, :]
            dk = tl.sum(acc, axis=1)
            out = dk_ptr + side * side_plane + h.to(tl.int64) * K_LEN + d
            tl.store(out, dk.to(dk_ptr.dtype.element_ty), mask=d < K_LEN)
            if HAS_D:
                if (side == 0) & (block == 0):
                    tl.store(dd_ptr + h, tl.sum(tl.where(d == 0, dk, 0.0), axis=0).to(dd_ptr.dtype.element_ty))
        else:
            t_blocks = tl.cdiv(K_LEN, BLOCK_L)
            h = q // t_blocks
            d = (q % t_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)
            corr_row = corr_ptr + (B * H + h).to(tl.int64) * n
            causal = tl.load(corr_row + d, mask=d < K_LEN, other=0.0)
            out = dk_ptr + h.to(tl.int64) * K_LEN + d
            tl.store(out, causal.to(dk_ptr.dtype.element_ty), mask=d < K_LEN)
            if BIDIRECTIONAL:
                anti = tl.load(corr_row + (n - 1 - d), mask=d < K_LEN, other=0.0)
                tl.store(out + side_plane, anti.to(dk_ptr.dtype.element_ty), mask=d < K_LEN)
            if HAS_D:
                if q % t_blocks == 0:
                    tl.store(dd_ptr + h, tl.load(corr_row).to(dd_ptr.dtype.element_ty))


# Elementwise kernels: one block size per launch (BLOCK_L elements, num_warps chosen from it). Under the
# interpreter a tiny block, so odd test lengths span several blocks.
BLOCK_L_GPU, BLOCK_D_GPU, BLOCK_F_GPU = 1024, (32, 64), 256
BLOCK_L = 16 if INTERPRETER else BLOCK_L_GPU
NUM_WARPS = 1 if INTERPRETER else 4
# The kernel gradient of the short-kernel path: [BLOCK_D taps, BLOCK_T positions] register tiles of
# BLOCK_D_GPU[0] x BLOCK_D_GPU[1] elements, BLOCK_D the kernel length rounded up to a power of two (at most
# BLOCK_D_GPU[0]: no lanes wasted on absent taps), BLOCK_T the rest.
BLOCK_D, BLOCK_T = (4, 8) if INTERPRETER else BLOCK_D_GPU


def dk_tile(k_len: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_T) of the direct path's kernel-gradient programs for a kernel of k_len taps per side."""
    if INTERPRETER:
        return BLOCK_D, BLOCK_T
    block_d = min(BLOCK_D_GPU[0], next_power_of_2(k_len))
    return block_d, BLOCK_D_GPU[0] * BLOCK_D_GPU[1] // block_d


# The spectral products: BLOCK_F frequencies per program, the batch looped over.
BLOCK_F = 8 if INTERPRETER else BLOCK_F_GPU

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


def _kernel_strides(k: Tensor, bidirectional: bool) -> tuple[int, int, int]:
    """(side, channel, tap) strides of k (side 0 for a causal kernel)."""
    return (k.stride(0), k.stride(1), k.stride(2)) if bidirectional else (0, k.stride(0), k.stride(1))


def use_direct(k_len: int) -> bool:
    """Whether a kernel of k_len taps (per side) takes the direct path (see ``DIRECT_MAX_TAPS``)."""
    return k_len <= DIRECT_MAX_TAPS


def _needs_conv(activation: str, gate_out: Tensor | None) -> bool:
    """Whether the backward needs the pre-activation z (GELU's slope, gate_out's gradient act(z))."""
    return activation == "gelu" or gate_out is not None


def _forward(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    bidirectional: bool,
    activation: str,
    gate_in: Tensor | None,
    gate_out: Tensor | None,
    direct: bool | None,
    store_z: bool,
) -> tuple[Tensor, Tensor]:
    """(y, z): the forward, and with ``store_z`` the pre-activation z (float32 [B, H, L]) where the backward needs
    it (GELU or gate_out; otherwise z is an empty tensor). FFT path: the prologue kernel, one rFFT of the
    [B H + H, n] buffer (v and the kernel), one complex product, the inverse FFT, the epilogue kernel; direct path:
    the epilogue kernel alone."""
    k_len = _check_triton_inputs(u, k, D, bidirectional, activation, gate_in, gate_out)
    B, H, L = u.shape
    y = torch.empty((B, H, L), dtype=u.dtype, device=u.device)
    store_z = store_z and _needs_conv(activation, gate_out)
    z = torch.empty((B, H, L), dtype=torch.float32, device=u.device) if store_z else u.new_empty(0)
    if y.numel() == 0:
        return y, z
    direct = use_direct(k_len) if direct is None else direct
    D = None if D is None else D.contiguous()  # the kernels read D[h] at unit stride
    gin = u if gate_in is None else gate_in
    k_args = (k_len, *_kernel_strides(k, bidirectional))
    with device_guard(u.device):
        if direct:
            n, conv = L, u  # conv_ptr is not read
        else:
            n = fft_length(L, k_len)
            rows = B * H + H
            buf = torch.empty((rows, n), dtype=torch.float32, device=u.device)
            launchable(_fftconv_prologue_kernel)[(rows, cdiv(n, BLOCK_L))](
                u,
                gin,
                k,
                buf,
                B * H,
                H,
                L,
                n,
                *k_args,
                *_strides(u),
                *_strides(gate_in),
                HAS_GATE_IN=gate_in is not None,
                BIDIRECTIONAL=bidirectional,
                BLOCK_L=BLOCK_L,
                num_warps=NUM_WARPS,
            )
            spectra = torch.fft.rfft(buf)
            conv = torch.fft.irfft(spectra[: B * H].view(B, H, -1) * spectra[B * H :], n=n)
        launchable(_fftconv_fwd_kernel)[(B * H, cdiv(L, BLOCK_L))](
            conv,
            k,
            u,
            gin,
            u if gate_out is None else gate_out,
            u if D is None else D,
            y,
            z if store_z else y,
            H,
            L,
            n,
            *k_args,
            *_strides(u),
            *_strides(gate_in),
            *_strides(gate_out),
            HAS_D=D is not None,
            HAS_GATE_IN=gate_in is not None,
            HAS_GATE_OUT=gate_out is not None,
            GELU=activation == "gelu",
            DIRECT=direct,
            BIDIRECTIONAL=bidirectional,
            STORE_Z=store_z,
            BLOCK_L=BLOCK_L,
            APPROX=not INTERPRETER,
            num_warps=NUM_WARPS,
        )
    return y, z


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
    """Triton forward of :func:`fftconv`. FFT path: a prologue kernel (v and the kernel zero-padded into one
    float32 buffer), one rFFT, one complex product, the inverse FFT (torch.fft, float32), the epilogue kernel;
    direct path (``direct``; default: ``use_direct(L')``): one kernel, taps summed in registers. The output is
    contiguous, in the dtype of u."""
    return _forward(u, k, D, bidirectional, activation, gate_in, gate_out, direct, store_z=False)[0]


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
    conv: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward of :func:`fftconv`: (du, dk, dD, d gate_in, d gate_out) in the dtypes of the inputs; the
    gradient of an absent input (D, a gate) is an empty tensor.

    ``conv``: the forward's pre-activation z (float32 [B, H, L], contiguous), used for GELU or gate_out; when it
    is None (or empty) and needed, the FFT path recomputes it with a forward, the direct path from the taps.
    FFT path, three kernels around one rFFT and one inverse FFT: the epilogue gradients (dz) with v and the
    kernel zero-padded into one buffer; the spectral products (the batch sum of the kernel gradient in
    registers); du, d gate_in, dk and dD (dD = the kernel gradient's lag 0). Direct path (``direct``; default:
    ``use_direct(L')``): the epilogue gradients, then one kernel for du, d gate_in and (reduced over the batch and
    positions in registers) dk and dD."""
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
    needs_conv = _needs_conv(activation, gate_out)
    if needs_conv and conv is not None and conv.numel() > 0:
        if conv.shape != u.shape or conv.dtype != torch.float32 or not conv.is_contiguous():
            raise ValueError(
                f"conv must be the forward's contiguous float32 z of shape {list(u.shape)}, got "
                f"{conv.dtype} {list(conv.shape)} with strides {conv.stride()}"
            )
        has_z = True
    elif needs_conv and not direct:
        conv, has_z = _forward(u, k, D, bidirectional, activation, gate_in, gate_out, False, store_z=True)[1], True
    else:
        has_z = False
    D = None if D is None else D.contiguous()  # the kernels read D[h] at unit stride
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dD = u.new_empty(0) if D is None else torch.empty(D.shape, dtype=D.dtype, device=D.device)
    BH = B * H
    n = L if direct else fft_length(L, k_len)
    rows = BH if direct else 2 * BH + H
    gin = u if gate_in is None else gate_in
    k_args = (k_len, *_kernel_strides(k, bidirectional))
    flags = dict(HAS_D=D is not None, HAS_GATE_IN=gate_in is not None, DIRECT=direct, BIDIRECTIONAL=bidirectional)
    with device_guard(u.device):
        buf = torch.empty((rows, n), dtype=torch.float32, device=u.device)
        launchable(_fftconv_bwd_epilogue_kernel)[(rows, cdiv(n, BLOCK_L))](
            grad_output,
            conv if has_z else buf,
            k,
            u,
            gin,
            u if gate_out is None else gate_out,
            u if D is None else D,
            buf,
            d_gate_out if gate_out is not None else buf,
            BH,
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
            HAS_Z=has_z,
            BLOCK_L=BLOCK_L,
            APPROX=not INTERPRETER,
            num_warps=NUM_WARPS,
        )
        if direct:
            corr = buf  # not read: the input kernel sums the taps
            block_d, block_t = dk_tile(k_len)
            dk_programs = H * (2 if bidirectional else 1) * cdiv(k_len, block_d)
        else:
            freqs = n // 2 + 1
            products = torch.empty((BH + H, freqs), dtype=torch.complex64, device=u.device)
            launchable(_fftconv_bwd_spectral_kernel)[(H, cdiv(freqs, BLOCK_F))](
                torch.view_as_real(torch.fft.rfft(buf)),
                torch.view_as_real(products),
                B,
                H,
                freqs,
                BLOCK_F=BLOCK_F,
                num_warps=NUM_WARPS,
            )
            corr = torch.fft.irfft(products, n=n)
            dk_programs = H * cdiv(k_len, BLOCK_L)
            block_d, block_t = BLOCK_D, BLOCK_T  # unused by the FFT path
        launchable(_fftconv_bwd_input_kernel)[(BH * cdiv(L, BLOCK_L) + dk_programs,)](
            corr,
            buf,
            k,
            u,
            gin,
            u if D is None else D,
            du,
            d_gate_in if gate_in is not None else du,
            dk,
            dk if D is None else dD,
            B,
            H,
            L,
            n,
            *k_args,
            *_strides(u),
            *_strides(gate_in),
            **flags,
            BLOCK_L=BLOCK_L,
            BLOCK_D=block_d,
            BLOCK_T=block_t,
            num_warps=NUM_WARPS,
        )
    return du, dk, dD, d_gate_in, d_gate_out


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered ops
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::fftconv")
def _fftconv_op(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    gate_in: Tensor | None,
    gate_out: Tensor | None,
    bidirectional: bool,
    activation: str,
) -> tuple[Tensor, Tensor]:
    return _forward(u, k, D, bidirectional, activation, gate_in, gate_out, None, store_z=True)


@_fftconv_op.register_fake
def _(u, k, D, gate_in, gate_out, bidirectional, activation):
    check_fftconv_inputs(u, k, D, bidirectional, activation, gate_in, gate_out)
    z = u.new_empty(u.shape, dtype=torch.float32) if _needs_conv(activation, gate_out) else u.new_empty(0)
    return u.new_empty(u.shape), z


@triton_op("zoo::fftconv_backward")
def _fftconv_backward_op(
    grad_output: Tensor,
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    gate_in: Tensor | None,
    gate_out: Tensor | None,
    conv: Tensor,
    bidirectional: bool,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return fftconv_backward(grad_output, u, k, D, bidirectional, activation, gate_in, gate_out, conv=conv)


@_fftconv_backward_op.register_fake
def _(grad_output, u, k, D, gate_in, gate_out, conv, bidirectional, activation):
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
    _, z = output
    ctx.save_for_backward(u, k, D, gate_in, gate_out, z)
    ctx.bidirectional, ctx.activation = bidirectional, activation
    ctx.mark_non_differentiable(z)


def _backward(ctx, grad_output: Tensor, grad_z: Tensor | None):
    u, k, D, gate_in, gate_out, z = ctx.saved_tensors
    grads = torch.ops.zoo.fftconv_backward(
        grad_output, u, k, D, gate_in, gate_out, z, ctx.bidirectional, ctx.activation
    )
    return (*_grads_of_present(grads, D, gate_in, gate_out), None, None)


_fftconv_op.register_autograd(_backward, setup_context=_setup_context)


def _fftconv_traced(u, k, D, gate_in, gate_out, bidirectional, activation) -> Tensor:
    """The output of ``zoo::fftconv`` (for :func:`dispatch_triton`; the pre-activation z stays inside the traced
    graph for the backward)."""
    return torch.ops.zoo.fftconv(u, k, D, gate_in, gate_out, bidirectional, activation)[0]


def _fftconv_forward_in_op_order(u, k, D, gate_in, gate_out, bidirectional, activation) -> Tensor:
    """:func:`fftconv_forward` with the arguments in the order of ``zoo::fftconv`` (for :func:`dispatch_triton`;
    no z: no backward will need it)."""
    return fftconv_forward(u, k, D, bidirectional, activation, gate_in, gate_out)


class _FFTConvFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers are called directly (fewer dispatches per call);
    ``torch.compile`` traces the registered op ``zoo::fftconv``; both run the same launchers."""

    @staticmethod
    def forward(ctx, u, k, D, gate_in, gate_out, bidirectional, activation):
        y, z = _forward(u, k, D, bidirectional, activation, gate_in, gate_out, None, store_z=True)
        ctx.save_for_backward(u, k, D, gate_in, gate_out, z)
        ctx.bidirectional, ctx.activation = bidirectional, activation
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        u, k, D, gate_in, gate_out, z = ctx.saved_tensors
        grads = fftconv_backward(grad_output, u, k, D, ctx.bidirectional, ctx.activation, gate_in, gate_out, conv=z)
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
            op=_fftconv_traced,
            function=_FFTConvFunction,
            launcher=_fftconv_forward_in_op_order,
        )
    return fftconv_reference(u, k, D, bidirectional, activation, gate_in, gate_out)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------


def aot_specs() -> list:
    """Compile specs (zoo/kernels/_aot.py): the elementwise kernels at the GPU block sizes, for u (and gates,
    outputs) in bf16, fp32 and fp16, with every optional part on (D, both gates, GELU, bidirectional, the saved z)
    and off, at the launch-time specialisations of contiguous [B, H, L] tensors (sizes and row strides multiples
    of 16, unit stride a constant); the epilogue kernels and the input-gradient kernel in their FFT and direct
    forms (the backward epilogue once more recomputing z from the taps); and for bf16 once more with arbitrary
    sizes and strides. The kernel k, D and the float32 buffers are float32 pointers. The spectral kernel (float32
    only) at aligned and arbitrary sizes."""
    from zoo.kernels._aot import KernelSpec

    kernels = (
        _fftconv_prologue_kernel,
        _fftconv_fwd_kernel,
        _fftconv_bwd_epilogue_kernel,
        _fftconv_bwd_input_kernel,
    )
    blocks = {"BLOCK_L": BLOCK_L_GPU, "BLOCK_D": BLOCK_D_GPU[0], "BLOCK_T": BLOCK_D_GPU[1]}

    def signature_of(kernel, constexprs, dtype, strided):
        signature = {}
        for name in kernel.arg_names:
            if name in constexprs:
                continue
            if name.endswith("_ptr"):
                signature[name] = "*fp32:16" if name in FP32_POINTERS else f"*{dtype}:16"
            elif strided:
                signature[name] = "i32"
            elif name.endswith("_l"):
                signature[name] = "i32:1"
            else:
                signature[name] = "i32:16"
        return signature

    specs = []
    for kernel in kernels:
        flag_names = [name for name in kernel.arg_names if name.startswith(("HAS_", "GELU", "BIDIRECTIONAL", "STORE_"))]
        variants = [(dtype, on, False, False, on) for dtype in ("bf16", "fp32", "fp16") for on in (True, False)]
        variants.append(("bf16", True, True, False, True))
        if "DIRECT" in kernel.arg_names:
            variants += [
                ("bf16", True, False, True, True),
                ("fp32", True, False, True, True),
                ("bf16", False, False, True, False),
                ("bf16", True, True, True, True),
            ]
            if "HAS_Z" in kernel.arg_names:
                variants.append(("bf16", True, False, True, False))  # z recomputed from the taps
        for dtype, on, strided, direct, has_z in variants:
            constexprs = dict.fromkeys(flag_names, on)
            if "HAS_Z" in constexprs:
                constexprs["HAS_Z"] = has_z
            constexprs.update({name: value for name, value in blocks.items() if name in kernel.arg_names})
            if "DIRECT" in kernel.arg_names:
                constexprs["DIRECT"] = direct
            if "APPROX" in kernel.arg_names:
                constexprs["APPROX"] = True
            label = ("all" if on else "plain") + (",direct" if direct else "") + (",strided" if strided else "")
            label += ",recompute" if on and "HAS_Z" in constexprs and not has_z else ""
            block = ",".join(f"{name[6:]}{constexprs[name]}" for name in blocks if name in constexprs)
            specs.append(
                KernelSpec(
                    name=f"{kernel.__name__}[{dtype},{block},w4,{label}]",
                    fn=kernel,
                    signature=signature_of(kernel, constexprs, dtype, strided),
                    constexprs=constexprs,
                    num_warps=4,
                )
            )
    for strided in (False, True):
        constexprs = {"BLOCK_F": BLOCK_F_GPU}
        specs.append(
            KernelSpec(
                name=f"_fftconv_bwd_spectral_kernel[fp32,F{BLOCK_F_GPU},w4" + (",strided]" if strided else "]"),
                fn=_fftconv_bwd_spectral_kernel,
                signature=signature_of(_fftconv_bwd_spectral_kernel, constexprs, "fp32", strided),
                constexprs=constexprs,
                num_warps=4,
            )
        )
    return specs + benchmark_specs()


# The pointers that are float32 whatever the dtype of u: the FFT buffers, the saved z, k and D (learned
# parameters, float32 in the models) and their gradients.
FP32_POINTERS = {
    "buf_ptr",
    "conv_ptr",
    "z_ptr",
    "corr_ptr",
    "dz_ptr",
    "spec_ptr",
    "out_ptr",
    "d_ptr",
    "k_ptr",
    "dk_ptr",
    "dd_ptr",
}

# The benchmarked shapes (scripts/benchmark.py: fftconv_cases), u in bf16, causal, D skip, GELU:
# (B, H, L, kernel length, gated)
FFTCONV_BENCHMARKS = (
    tuple((32, 768, L, L, False) for L in (1024, 2048, 4096, 8192, 16384))
    + tuple((64, 768, L, L, True) for L in (1024, 4096))
    + tuple((32, 768, 4096, k, False) for k in (4, 64, 128))
)


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops): the kernels each benchmarked call launches (forward:
    prologue and epilogue, or the direct epilogue; backward: the epilogue gradients, the spectral products and
    the input kernel, or direct the epilogue gradients and the input kernel), with the arguments the launchers
    pass (contiguous u, gates, dy; float32 k and D; the saved z) and the useful work of a program: the elements of
    u (the FFT path's elementwise kernels; the zero padding up to the FFT length and the rows of v and k the
    backward's buffer also holds are cost), the complex products (spectral kernel: two per (b, h, frequency)), or
    the multiply-adds of the taps that land on the sequence (direct path: B H sum_t min(t + 1, L') per
    correlation; the input kernel does two, the input's and the kernel's). The first case's forward epilogue and
    the K = 4 case's direct forward are compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    for B, H, L, k_len, gated in FFTCONV_BENCHMARKS:
        case = f"B{B}xH{H}xL{L}" + (f"xK{k_len}" if k_len != L else "") + ("-gated" if gated else "")
        direct = use_direct(k_len)
        n = L if direct else fft_length(L, k_len)
        freqs = n // 2 + 1
        block_d = min(BLOCK_D_GPU[0], next_power_of_2(k_len)) if direct else BLOCK_D_GPU[0]
        block_t = BLOCK_D_GPU[0] * BLOCK_D_GPU[1] // block_d
        rows, elements = B * H, B * H * L
        macs = B * H * sum(min(t + 1, k_len) for t in range(L))
        contiguous = (H * L, L, 1)
        gates = contiguous if gated else (0, 0, 0)
        values = dict(
            B=B,
            BH=B * H,
            H=H,
            L=L,
            n=n,
            F=freqs,
            K_LEN=k_len,
            **dict(zip(("sk_c", "sk_h", "sk_l"), (0, k_len, 1), strict=True)),
            **{f"{prefix}_{axis}": s for prefix in ("su", "sdy") for axis, s in zip("bhl", contiguous, strict=True)},
            **{f"{prefix}_{axis}": s for prefix in ("sgi", "sgo") for axis, s in zip("bhl", gates, strict=True)},
            HAS_D=True,
            HAS_GATE_IN=gated,
            HAS_GATE_OUT=gated,
            GELU=True,
            HAS_Z=True,
            STORE_Z=True,
            DIRECT=direct,
            BIDIRECTIONAL=False,
            BLOCK_L=BLOCK_L_GPU,
            BLOCK_D=block_d,
            BLOCK_T=block_t,
            BLOCK_F=BLOCK_F_GPU,
            APPROX=True,
            **dict.fromkeys(("u_ptr", "gin_ptr", "gout_ptr", "y_ptr", "dy_ptr", "du_ptr"), "*bf16"),
            **dict.fromkeys(sorted(FP32_POINTERS), "*fp32"),
            dgout_ptr="*bf16" if gated else "*fp32",
            dgin_ptr="*bf16",
        )
        if direct:
            values["conv_ptr"] = "*bf16"  # the direct path passes u (not read)
        position_blocks, padded_blocks = cdiv(L, BLOCK_L_GPU), cdiv(n, BLOCK_L_GPU)
        launches = []  # (kernel, programs, units, unit, trips)
        if direct:
            dk_programs = H * cdiv(k_len, block_d)
            launches += [
                (_fftconv_fwd_kernel, rows * position_blocks, macs, "MAC", (k_len,)),
                (_fftconv_bwd_epilogue_kernel, rows * position_blocks, elements, "element", ()),
                (
                    _fftconv_bwd_input_kernel,
                    rows * position_blocks + dk_programs,
                    2 * macs,
                    "MAC",
                    ((k_len, B), cdiv(L, block_t)),  # input taps | batch, then positions
                ),
            ]
        else:
            dk_programs = H * cdiv(k_len, BLOCK_L_GPU)
            launches += [
                (_fftconv_prologue_kernel, (rows + H) * padded_blocks, elements, "element", ()),
                (_fftconv_fwd_kernel, rows * position_blocks, elements, "element", ()),
                (_fftconv_bwd_epilogue_kernel, (2 * rows + H) * padded_blocks, elements, "element", ()),
                (
                    _fftconv_bwd_spectral_kernel,
                    H * cdiv(freqs, BLOCK_F_GPU),
                    2 * rows * freqs,
                    "complex product",
                    (B,),
                ),
                (_fftconv_bwd_input_kernel, rows * position_blocks + dk_programs, elements, "element", ()),
            ]
        for kernel, programs, units, unit, trips in launches:
            names = {p.name for p in kernel.params}
            if unit == "MAC":
                formula = f"MACs = {units // macs} x B H sum_t min(t + 1, L') = {units}"
            elif unit == "element":
                formula = f"elements = B H L = {units}"
            else:
                formula = f"complex products = 2 B H (n / 2 + 1) = {units}"
            formula += f"; programs = {programs}" + (f"; loop trips {trips}" if trips else "; no loop")
            label = "bf16,D,gelu" + (",gated" if gated else "") + (",direct" if direct else "")
            if kernel is _fftconv_bwd_spectral_kernel:
                label = "fp32"
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
