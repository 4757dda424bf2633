"""S4D convolution kernel (docs/semantics.md §4.1): the Vandermonde product that turns diagonal state-space parameters
into a length-L convolution kernel per channel.

Parameters of H channels with N2 = N / 2 complex modes each: ``log_dt`` [H], ``C`` [H, N2, 2] (``view_as_real``
of complex [H, N2]), ``log_A_real`` [H, N2], ``A_imag`` [H, N2]. With dt = exp(log_dt), A = -exp(log_A_real) +
i A_imag and dtA = A dt:

* ZOH (``method="zoh"``): K[h, l] = 2 Re( sum_n C[h, n] (exp(dtA) - 1) / A * exp(dtA l) ).
* bilinear (``method="bilinear"``): dA = (1 + dtA / 2) / (1 - dtA / 2), C' = C dt / (1 - dtA / 2),
  K[h, l] = 2 Re( sum_n C'[h, n] dA^l ) (state-spaces/s4 ``SSMKernelDiag``, ``disc="bilinear"``).

Both are K[h, l] = 2 Re( sum_n C'[h, n] exp(z[h, n] l) ) with the per-mode coefficient C' and log-step z
(z = dtA for ZOH, log dA for bilinear). The Triton kernels compute exactly that Vandermonde product with real and
imaginary parts carried separately: exp(z l) = exp(Re z l) (cos(Im z l), sin(Im z l)) evaluated directly at
every l (no repeated multiplication: accurate at large L), tiles over (h, l) looping over the modes, O(H (N + L))
memory (the H x N x L tensor is never formed). The O(H N) map from the parameters to (C', z) runs inside the
kernels in float64 (complex arithmetic by hand; it cancels digits when |dtA| is small), rounded to float32 once
for the fp32 Vandermonde loops: the forward is one launch. The backward is two: the first reduces over l in
registers per (h, block of modes, chunk of l); the second, one program per channel, adds the chunks and applies
the chain rule to the parameters in float64 (d log_dt sums over the channel's modes in registers; deterministic,
no atomics).

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import (
    INTERPRETER,
    cdiv,
    check_triton_device,
    device_guard,
    dispatch_triton,
    launchable,
    once_differentiable,
    resolve_backend,
    tl,
    triton,
    triton_op,
)

METHODS = ("zoh", "bilinear")

__all__ = [
    "s4d_kernel",
    "s4d_kernel_backward",
    "s4d_kernel_forward",
    "s4d_kernel_reference",
]


# ----------------------------------------------------------------------------------------------------------------
# Input checks (shared by the reference and the launchers)
# ----------------------------------------------------------------------------------------------------------------


def check_s4d_kernel_inputs(
    log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str
) -> tuple[int, int]:
    """Raise ``TypeError``/``ValueError`` naming the expected shapes; return (H, N2)."""
    tensors = (("log_dt", log_dt), ("C", C), ("log_A_real", log_A_real), ("A_imag", A_imag))
    for name, t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a real floating-point dtype, got {t.dtype}")
    if log_dt.dim() != 1:
        raise ValueError(f"log_dt must have shape [H], got {list(log_dt.shape)}")
    H = log_dt.shape[0]
    if C.dim() != 3 or C.shape[0] != H or C.shape[2] != 2:
        raise ValueError(
            f"C must have shape [H, N2, 2] = [{H}, N2, 2] (view_as_real of complex [H, N2]), got {list(C.shape)}"
        )
    N2 = C.shape[1]
    for name, t in tensors[2:]:
        if t.shape != (H, N2):
            raise ValueError(f"{name} must have shape [H, N2] = [{H}, {N2}], got {list(t.shape)}")
    if isinstance(L, bool) or not isinstance(L, (int, torch.SymInt)) or L < 1:  # SymInt: L = u.shape[-1] compiled
        raise ValueError(f"L must be a positive int, got {L!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    devices = {t.device for _, t in tensors}
    if len(devices) > 1:
        raise ValueError(f"log_dt, C, log_A_real and A_imag must be on one device, got {sorted(map(str, devices))}")
    return H, N2


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def _coefficients(log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, method: str):
    """(C', z) as complex [H, N2] tensors: K[h, l] = 2 Re(sum_n C'[h, n] exp(z[h, n] l)); also (dt, A, dtA)."""
    dt = torch.exp(log_dt)[:, None]
    A = torch.complex(-torch.exp(log_A_real), A_imag)
    dtA = A * dt
    Cc = torch.complex(C[..., 0], C[..., 1])
    if method == "zoh":
        return Cc * (torch.exp(dtA) - 1) / A, dtA
    return Cc * dt / (1 - dtA / 2), torch.log(1 + dtA / 2) - torch.log(1 - dtA / 2)


def s4d_kernel_reference(
    log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str = "zoh"
) -> Tensor:
    """The S4D convolution kernel K [H, L] with complex tensors (see the module docstring).

    Computes in complex64 (complex128 when any parameter is float64) and returns float32 (float64). Forms the
    H x N2 x L Vandermonde tensor: the plain formula, not the memory-frugal kernel."""
    check_s4d_kernel_inputs(log_dt, C, log_A_real, A_imag, L, method)
    dtype = torch.float64 if torch.float64 in (log_dt.dtype, C.dtype, log_A_real.dtype, A_imag.dtype) else torch.float32
    args = [t.to(dtype) for t in (log_dt, C, log_A_real, A_imag)]
    coeff, z = _coefficients(*args, method)
    pos = torch.arange(L, device=log_dt.device, dtype=dtype)
    return 2 * torch.einsum("hn,hnl->hl", coeff, torch.exp(z[..., None] * pos)).real


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# The kernels read the parameters themselves (float32, any strides) and form the per-mode coefficient C' and
# log-step z in float64 (complex arithmetic by hand): (exp(dtA) - 1) / A and its chain rule cancel digits when
# |dtA| is small (dt ~ 1e-3). C' and z are rounded to float32 once for the Vandermonde loops (fp32).
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _cmul(ar, ai, br, bi):
    """(a b) as (real, imaginary)."""
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def _cdiv(ar, ai, br, bi):
    """(a / b) as (real, imaginary)."""
    den = br * br + bi * bi
    return (ar * br + ai * bi) / den, (ai * br - ar * bi) / den


@triton.jit
def _arg(x, y):
    """The principal argument atan2(y, x) in (-pi, pi] (float64; Triton has no atan2 the interpreter runs): a
    point left of the imaginary axis is reflected through the origin (+-pi), then three half-angle steps
    (x <- x + |(x, y)| halves the angle) leave |y / x| <= tan(pi / 16) < 0.2, where 14 terms of the atan series
    are exact to double precision; the angle is 8 atan(y / x)."""
    neg = x < 0.0
    xr = tl.where(neg, -x, x)
    yi = tl.where(neg, -y, y)
    for _ in tl.static_range(3):
        xr = xr + tl.sqrt(xr * xr + yi * yi)
    t = yi / xr
    t2 = t * t
    series = tl.zeros_like(t) + 1.0 / 27.0
    for j in tl.static_range(13):  # Horner: sum_k (-t^2)^k / (2 k + 1), k = 12 .. 0
        series = series * -t2 + 1.0 / (2 * (12 - j) + 1)
    half_turns = tl.where(neg, tl.where(y >= 0.0, 1.0, -1.0), 0.0).to(tl.float64)
    return 8.0 * t * series + half_turns * 3.141592653589793


@triton.jit
def _cos_sin64(x):
    """(cos x, sin x) in float64 with no slow path (libdevice's cos/sin keep a Payne-Hanek reduction on a
    local-memory stack): x = q pi/2 + r with q = round(2 x / pi) and r by fdlibm's three-part Cody-Waite split of
    pi/2 (33 + 33 + 33 bits: exact products for |q| < 2^20, |x| < 1.6e6), |r| <= pi/4; Taylor series to r^17 /
    r^16 (remainders below 1e-17 relative); the quadrant q mod 4 picks the signs."""
    q = tl.floor(x * 0.6366197723675814 + 0.5)
    r = x - q * 1.57079632673412561417
    r = r - q * 6.07710050630396597660e-11
    r = r - q * 2.02226624871116645580e-21
    z = r * r
    s = tl.zeros_like(z) + 1.0
    c = tl.zeros_like(z) + 1.0
    for j in tl.static_range(8):  # Horner, k = 8 .. 1: s = sum (-z)^k / (2k + 1)!, c = sum (-z)^k / (2k)!
        s = 1.0 - z * s * (1.0 / ((2 * (8 - j) + 1) * (2 * (8 - j))))
        c = 1.0 - z * c * (1.0 / ((2 * (8 - j) - 1) * (2 * (8 - j))))
    s = s * r
    quadrant = q.to(tl.int32) & 3
    cos = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    sin = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    return cos, sin


@triton.jit
def _load_params(log_dt_ptr, c_ptr, lar_ptr, aim_ptr, h, n, n_mask, s_dt, sc_h, sc_n, sc_c, sar_h, sar_n, sai_h, sai_n):
    """(log_dt[h], Re C, Im C, log_A_real, A_imag) at modes n of channel h, in float64 (masked modes: zeros)."""
    log_dt = tl.load(log_dt_ptr + h * s_dt).to(tl.float64)
    c = c_ptr + h * sc_h + n * sc_n
    c_re = tl.load(c, mask=n_mask, other=0.0).to(tl.float64)
    c_im = tl.load(c + sc_c, mask=n_mask, other=0.0).to(tl.float64)
    lar = tl.load(lar_ptr + h * sar_h + n * sar_n, mask=n_mask, other=0.0).to(tl.float64)
    aim = tl.load(aim_ptr + h * sai_h + n * sai_n, mask=n_mask, other=0.0).to(tl.float64)
    return log_dt, c_re, c_im, lar, aim


@triton.jit
def _discretize(log_dt, c_re, c_im, lar, aim, ZOH: tl.constexpr):
    """(Re C', Im C', Re z, Im z) in float64 (the module docstring): w = dt A with dt = exp(log_dt),
    A = -exp(log_A_real) + i A_imag; ZOH: C' = C (exp(w) - 1) / A, z = w; bilinear: C' = C dt / (1 - w / 2),
    z = log(1 + w / 2) - log(1 - w / 2) (principal logarithms, as the reference)."""
    dt = tl.exp(log_dt)
    ar = -tl.exp(lar)
    wr = ar * dt
    wi = aim * dt
    if ZOH:
        e = tl.exp(wr)
        cos, sin = _cos_sin64(wi)
        br, bi = _cdiv(e * cos - 1.0, e * sin, ar, aim)
        cr, ci = _cmul(c_re, c_im, br, bi)
        zr = wr
        zi = wi
    else:
        den_r = 1.0 - 0.5 * wr
        den_i = -0.5 * wi
        num_r = 1.0 + 0.5 * wr
        num_i = 0.5 * wi
        cr, ci = _cdiv(c_re * dt, c_im * dt, den_r, den_i)
        zr = 0.5 * (tl.log(num_r * num_r + num_i * num_i) - tl.log(den_r * den_r + den_i * den_i))
        zi = _arg(num_r, num_i) - _arg(den_r, den_i)
    return cr, ci, zr, zi


@triton.jit
def _coefficients32(
    log_dt_ptr, c_ptr, lar_ptr, aim_ptr, h, n, n_mask, s_dt, sc_h, sc_n, sc_c, sar_h, sar_n, sai_h, sai_n, ZOH
):
    """(Re C', Im C', Re z, Im z) of modes n of channel h, formed in float64 and rounded to float32."""
    log_dt, c_re, c_im, lar, aim = _load_params(
        log_dt_ptr, c_ptr, lar_ptr, aim_ptr, h, n, n_mask, s_dt, sc_h, sc_n, sc_c, sar_h, sar_n, sai_h, sai_n
    )
    cr, ci, zr, zi = _discretize(log_dt, c_re, c_im, lar, aim, ZOH)
    return cr.to(tl.float32), ci.to(tl.float32), zr.to(tl.float32), zi.to(tl.float32)


@triton.jit
def _cos_sin(x):
    """(cos x, sin x) in fp32 arithmetic with no slow path (libdevice's sinf/cosf keep a Payne-Hanek reduction
    on a local-memory stack): x = q pi/2 + r with q = round(2 x / pi) and r by a three-constant Cody-Waite
    reduction (exact for |q| < 2^16), |r| <= pi/4; Cephes' minimax polynomials on r; the quadrant q mod 4 picks
    the signs. About 1 ulp for the |x| an S4D kernel meets."""
    q = tl.floor(x * 0.6366197723675814 + 0.5)
    r = x - q * 1.5703125
    r = r - q * 4.837512969970703125e-4
    r = r - q * 7.549789954891882e-8
    z = r * r
    s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r
    c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0
    quadrant = q.to(tl.int32) & 3
    cos = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    sin = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    return cos, sin


@triton.jit
def _powers(zr, zi, lf):
    """exp(z l) as (real, imaginary) [BLOCK_N, BLOCK_L] tiles, evaluated directly at every l."""
    magnitude = tl.exp(zr[:, None] * lf[None, :])
    cos, sin = _cos_sin(zi[:, None] * lf[None, :])
    return magnitude * cos, magnitude * sin


@triton.jit
def _s4d_vandermonde_fwd_kernel(
    log_dt_ptr,
    c_ptr,
    lar_ptr,
    aim_ptr,
    k_ptr,
    scratch_ptr,
    N2,
    L,
    l_per_program,
    s_dt,
    sc_h,
    sc_n,
    sc_c,
    sar_h,
    sar_n,
    sai_h,
    sai_n,
    ZOH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """K[h, l] = 2 Re(sum_n C'[h, n] exp(z[h, n] l)) for one channel h (program axis 0) and a chunk of
    l_per_program positions (axis 1). The outer loop runs over the modes in blocks of BLOCK_N, forming each
    block's C' and z from the parameters in float64 once (:func:`_discretize`; its cost is spread over the
    chunk); the inner loop over the chunk in steps of BLOCK_L, reducing the [BLOCK_N, BLOCK_L] tile over the
    modes. A mode block after the first adds to what the program stored before (its own positions: no race)."""
    h = tl.program_id(0).to(tl.int64)
    l_begin = tl.program_id(1) * l_per_program
    l_end = tl.minimum(l_begin + l_per_program, L)
    scratch = scratch_ptr + (h * tl.num_programs(1) + tl.program_id(1)) * 4 * N2
    for n_start in range(0, N2, BLOCK_N):
        n = n_start + tl.arange(0, BLOCK_N)
        n_mask = n < N2
        cr, ci, zr, zi = _coefficients32(
            log_dt_ptr, c_ptr, lar_ptr, aim_ptr, h, n, n_mask, s_dt, sc_h, sc_n, sc_c, sar_h, sar_n, sai_h, sai_n, ZOH
        )
        # Through the program's scratch row: the float64 chain keeps a layout of its own (about one mode per
        # thread) instead of the tile's (which holds several modes per thread: too many float64 registers).
        tl.store(scratch + n, cr, mask=n_mask)
        tl.store(scratch + N2 + n, ci, mask=n_mask)
        tl.store(scratch + 2 * N2 + n, zr, mask=n_mask)
        tl.store(scratch + 3 * N2 + n, zi, mask=n_mask)
        tl.debug_barrier()
        cr = tl.load(scratch + n, mask=n_mask, other=0.0)
        ci = tl.load(scratch + N2 + n, mask=n_mask, other=0.0)
        zr = tl.load(scratch + 2 * N2 + n, mask=n_mask, other=0.0)
        zi = tl.load(scratch + 3 * N2 + n, mask=n_mask, other=0.0)
        for start in range(l_begin, l_end, BLOCK_L):
            pos = start + tl.arange(0, BLOCK_L)
            l_mask = pos < l_end
            lf = tl.where(l_mask, pos, 0).to(tl.float32)
            wr, wi = _powers(zr, zi, lf)
            out = k_ptr + h * L + pos
            k = 2.0 * tl.sum(cr[:, None] * wr - ci[:, None] * wi, axis=0)
            k += tl.load(out, mask=l_mask & (n_start > 0), other=0.0)
            tl.store(out, k, mask=l_mask)


@triton.jit
def _s4d_vandermonde_bwd_kernel(
    log_dt_ptr,
    c_ptr,
    lar_ptr,
    aim_ptr,
    dk_ptr,
    partial_ptr,
    H,
    N2,
    L,
    l_per_program,
    stride_dh,
    stride_dl,
    s_dt,
    sc_h,
    sc_n,
    sc_c,
    sar_h,
    sar_n,
    sai_h,
    sai_n,
    ZOH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Gradients of the coefficients for one channel (axis 0), BLOCK_N modes (axis 1) and a chunk of
    l_per_program positions (axis 2): with S = sum_l dK[l] exp(z l) and T = sum_l dK[l] l exp(z l) (reduced in
    registers), d C' = 2 conj(S) and d z = 2 conj(C' T) (as d Re + i d Im), written to
    ``partial[chunk, 0..3, h, n]``; :func:`_s4d_chain_rule_kernel` adds the chunks."""
    h = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk = tl.program_id(2)
    n_mask = n < N2
    cr, ci, zr, zi = _coefficients32(
        log_dt_ptr, c_ptr, lar_ptr, aim_ptr, h, n, n_mask, s_dt, sc_h, sc_n, sc_c, sar_h, sar_n, sai_h, sai_n, ZOH
    )
    s_re = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
    s_im = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
    t_re = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
    t_im = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
    l_begin = chunk * l_per_program
    l_end = tl.minimum(l_begin + l_per_program, L)
    for start in range(l_begin, l_end, BLOCK_L):
        pos = start + tl.arange(0, BLOCK_L)
        l_mask = pos < l_end
        g = tl.load(dk_ptr + h * stride_dh + pos * stride_dl, mask=l_mask, other=0.0).to(tl.float32)
        lf = tl.where(l_mask, pos, 0).to(tl.float32)
        wr, wi = _powers(zr, zi, lf)
        wr = wr * g[None, :]
        wi = wi * g[None, :]
        s_re += wr
        s_im += wi
        t_re += wr * lf[None, :]
        t_im += wi * lf[None, :]
    sr = tl.sum(s_re, axis=1)
    si = tl.sum(s_im, axis=1)
    tr = tl.sum(t_re, axis=1)
    ti = tl.sum(t_im, axis=1)
    plane = H * N2  # H may arrive as the constant 1 (the JIT's specialisation): no method calls on it
    out = partial_ptr + (chunk.to(tl.int64) * 4 * H + h) * N2 + n
    tl.store(out, 2.0 * sr, mask=n_mask)
    tl.store(out + plane, -2.0 * si, mask=n_mask)
    tl.store(out + 2 * plane, 2.0 * (cr * tr - ci * ti), mask=n_mask)
    tl.store(out + 3 * plane, -2.0 * (cr * ti + ci * tr), mask=n_mask)


@triton.jit
def _s4d_chain_rule_kernel(
    partial_ptr,
    log_dt_ptr,
    c_ptr,
    lar_ptr,
    aim_ptr,
    d_log_dt_ptr,
    dc_ptr,
    d_lar_ptr,
    d_aim_ptr,
    H,
    N2,
    chunks,
    s_dt,
    sc_h,
    sc_n,
    sc_c,
    sar_h,
    sar_n,
    sai_h,
    sai_n,
    ZOH: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The second backward kernel, one program per channel h: adds the chunks of ``partial`` (float32, summed in float64) into the
    coefficient gradients G_C' and G_z (G = dL/dRe + i dL/dIm) and applies the chain rule to the parameters in
    float64 (for a holomorphic w = f(u): G_u = G_w conj(f'(u)); for a real x: dL/dx = Re(G_w conj(f'(x)))),
    looping over all modes of the channel in blocks of BLOCK_N so that d log_dt (a sum over the modes) is reduced
    in registers. Writes d log_dt [H], d C [H, N2, 2], d log_A_real, d A_imag [H, N2] (contiguous float32)."""
    h = tl.program_id(0).to(tl.int64)
    plane = H * N2
    g_log_dt = tl.zeros([BLOCK_N], dtype=tl.float64)
    for start in range(0, N2, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = n < N2
        gc_r = tl.zeros([BLOCK_N], dtype=tl.float64)
        gc_i = tl.zeros([BLOCK_N], dtype=tl.float64)
        gz_r = tl.zeros([BLOCK_N], dtype=tl.float64)
        gz_i = tl.zeros([BLOCK_N], dtype=tl.float64)
        for chunk in range(0, chunks):
            at = partial_ptr + (chunk * 4 * H + h) * N2 + n
            gc_r += tl.load(at, mask=n_mask, other=0.0).to(tl.float64)
            gc_i += tl.load(at + plane, mask=n_mask, other=0.0).to(tl.float64)
            gz_r += tl.load(at + 2 * plane, mask=n_mask, other=0.0).to(tl.float64)
            gz_i += tl.load(at + 3 * plane, mask=n_mask, other=0.0).to(tl.float64)
        log_dt, c_re, c_im, lar, aim = _load_params(
            log_dt_ptr, c_ptr, lar_ptr, aim_ptr, h, n, n_mask, s_dt, sc_h, sc_n, sc_c, sar_h, sar_n, sai_h, sai_n
        )
        dt = tl.exp(log_dt)
        a = tl.exp(lar)
        ar = -a
        wr = ar * dt
        wi = aim * dt
        if ZOH:  # C' = C (exp(w) - 1) / A, z = w = A dt
            e = tl.exp(wr)
            cos, sin = _cos_sin64(wi)
            er = e * cos
            ei = e * sin
            br, bi = _cdiv(er - 1.0, ei, ar, aim)
            gC_r, gC_i = _cmul(gc_r, gc_i, br, -bi)
            gb_r, gb_i = _cmul(gc_r, gc_i, c_re, -c_im)
            xr, xi = _cdiv(dt * er - br, dt * ei - bi, ar, aim)  # dB/dA
            gA_r, gA_i = _cmul(gb_r, gb_i, xr, -xi)
            gA_r += gz_r * dt
            gA_i += gz_i * dt
            g_dt = (gb_r * er + gb_i * ei) + (gz_r * ar + gz_i * aim)
        else:  # C' = C dt / (1 - w / 2), z = log(1 + w / 2) - log(1 - w / 2)
            den_r = 1.0 - 0.5 * wr
            den_i = -0.5 * wi
            num_r = 1.0 + 0.5 * wr
            num_i = 0.5 * wi
            yr, yi = _cdiv(dt, 0.0, den_r, den_i)
            gC_r, gC_i = _cmul(gc_r, gc_i, yr, -yi)
            d2_r, d2_i = _cmul(den_r, den_i, den_r, den_i)
            pr, pi = _cdiv(c_re * dt, c_im * dt, 2.0 * d2_r, 2.0 * d2_i)
            nd_r, nd_i = _cmul(num_r, num_i, den_r, den_i)
            qr, qi = _cdiv(1.0, 0.0, nd_r, nd_i)
            gw_r, gw_i = _cmul(gc_r, gc_i, pr, -pi)
            t_r, t_i = _cmul(gz_r, gz_i, qr, -qi)
            gw_r += t_r
            gw_i += t_i
            gA_r = gw_r * dt
            gA_i = gw_i * dt
            rr, ri = _cdiv(c_re, c_im, den_r, den_i)
            g_dt = (gc_r * rr + gc_i * ri) + (gw_r * ar + gw_i * aim)
        g_log_dt += tl.where(n_mask, g_dt * dt, 0.0)
        out = h * N2 + n
        tl.store(dc_ptr + 2 * out, gC_r.to(tl.float32), mask=n_mask)
        tl.store(dc_ptr + 2 * out + 1, gC_i.to(tl.float32), mask=n_mask)
        tl.store(d_lar_ptr + out, (-a * gA_r).to(tl.float32), mask=n_mask)
        tl.store(d_aim_ptr + out, gA_i.to(tl.float32), mask=n_mask)
    tl.store(d_log_dt_ptr + h, tl.sum(g_log_dt, axis=0).to(tl.float32))


def _configs(rows: tuple[tuple[int, int, int], ...]) -> list:
    return [triton.Config(dict(BLOCK_N=n, BLOCK_L=block_l), num_warps=w) for n, block_l, w in rows]


# A fixed tiny configuration under the interpreter (CPU tests: odd test sizes span several tiles); on the GPU,
# tiles autotuned per (N2, L). The backward holds four accumulator tiles, so its tiles are smaller. The chain
# rule kernel loops over the modes of a channel in blocks of CHAIN_BLOCK_N.
if INTERPRETER:
    _FWD_CONFIGS = _configs(((4, 8, 1),))
    _BWD_CONFIGS = _configs(((4, 8, 1),))
    CHAIN_BLOCK_N, CHAIN_WARPS = 4, 1
else:
    _FWD_CONFIGS = _configs(((16, 128, 4), (32, 128, 4), (32, 256, 8), (16, 256, 4), (32, 64, 4)))
    _BWD_CONFIGS = _configs(((16, 64, 4), (32, 64, 4), (16, 128, 8), (32, 128, 8), (64, 32, 8)))
    CHAIN_BLOCK_N, CHAIN_WARPS = 32, 1
CHAIN_BLOCK_N_GPU = 32

_s4d_fwd = triton.autotune(configs=_FWD_CONFIGS, key=["N2", "L", "l_per_program"])(_s4d_vandermonde_fwd_kernel)
_s4d_bwd = triton.autotune(configs=_BWD_CONFIGS, key=["N2", "L", "l_per_program"])(_s4d_vandermonde_bwd_kernel)


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------


def _check_triton_inputs(
    log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str
) -> tuple[int, int]:
    H, N2 = check_s4d_kernel_inputs(log_dt, C, log_A_real, A_imag, L, method)
    for name, t in (("log_dt", log_dt), ("C", C), ("log_A_real", log_A_real), ("A_imag", A_imag)):
        if t.dtype != torch.float32:
            raise TypeError(
                f"the Triton S4D kernel takes {name} in torch.float32 (fp32 arithmetic), got {t.dtype}; "
                "use backend='torch' for other dtypes"
            )
    check_triton_device(log_dt.device)
    return H, N2


def _param_strides(log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor) -> tuple[int, ...]:
    """The strides the kernels read the parameters with: log_dt; C (channel, mode, re/im); log_A_real, A_imag
    (channel, mode)."""
    return (log_dt.stride(0), *C.stride(), *log_A_real.stride(), *A_imag.stride())


def _l_per_program(L: int, parallel_programs: int) -> int:
    """Positions each program of the Vandermonde kernels covers: enough programs to fill a GPU (about 1000),
    each covering at least 1024 positions (which also spreads the float64 coefficients each program forms)."""
    if INTERPRETER:
        return 16  # several chunks even for tiny test lengths
    chunks = max(1, min(cdiv(1024, parallel_programs), cdiv(L, 1024)))
    return cdiv(L, chunks)


def s4d_kernel_forward(
    log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str = "zoh"
) -> Tensor:
    """Triton forward of :func:`s4d_kernel`: K [H, L] float32, one launch. Each program (a channel and a chunk of
    positions) forms the coefficients (C', z) of the channel's modes from the parameters in float64 (rounded to
    float32 once) and the Vandermonde products of its positions; O(H (N2 + L)) memory."""
    H, N2 = _check_triton_inputs(log_dt, C, log_A_real, A_imag, L, method)
    K = torch.empty((H, L), dtype=torch.float32, device=log_dt.device)
    if H == 0 or N2 == 0:
        return K.zero_()

    per_program = _l_per_program(L, H)
    chunks = cdiv(L, per_program)
    scratch = torch.empty((H, chunks, 4, N2), dtype=torch.float32, device=log_dt.device)
    with device_guard(log_dt.device):
        launchable(_s4d_fwd)[(H, chunks)](
            log_dt,
            C,
            log_A_real,
            A_imag,
            K,
            scratch,
            N2,
            L,
            per_program,
            *_param_strides(log_dt, C, log_A_real, A_imag),
            ZOH=method == "zoh",
        )
    return K


def s4d_kernel_backward(
    grad_K: Tensor, log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str = "zoh"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton backward of :func:`s4d_kernel`: (d log_dt, d C, d log_A_real, d A_imag), float32, given
    grad_K [H, L] (any strides). Two launches: the first reduces over l per (channel, block of modes, chunk of
    l) into float32 partial sums; the second, one program per channel, adds the chunks and applies the chain rule
    to the parameters in float64 (deterministic: no atomics)."""
    H, N2 = _check_triton_inputs(log_dt, C, log_A_real, A_imag, L, method)
    if not isinstance(grad_K, Tensor) or grad_K.shape != (H, L):
        shape = list(grad_K.shape) if isinstance(grad_K, Tensor) else type(grad_K).__name__
        raise ValueError(f"grad_K must have the output's shape [H, L] = [{H}, {L}], got {shape}")
    if grad_K.device != log_dt.device:
        raise ValueError(f"grad_K must be on the device of log_dt ({log_dt.device}), got {grad_K.device}")
    if H == 0 or N2 == 0:
        return (torch.zeros_like(log_dt), torch.zeros_like(C), torch.zeros_like(log_A_real), torch.zeros_like(A_imag))
    per_program = _l_per_program(L, H * cdiv(N2, 32))
    chunks = cdiv(L, per_program)
    device = log_dt.device
    partial = torch.empty((chunks, 4, H, N2), dtype=torch.float32, device=device)
    d_log_dt = torch.empty((H,), dtype=torch.float32, device=device)
    d_C = torch.empty((H, N2, 2), dtype=torch.float32, device=device)
    d_log_A_real = torch.empty((H, N2), dtype=torch.float32, device=device)
    d_A_imag = torch.empty((H, N2), dtype=torch.float32, device=device)
    strides = _param_strides(log_dt, C, log_A_real, A_imag)
    zoh = method == "zoh"

    def grid(meta):
        return (H, cdiv(N2, meta["BLOCK_N"]), chunks)

    with device_guard(device):
        launchable(_s4d_bwd)[grid](
            log_dt,
            C,
            log_A_real,
            A_imag,
            grad_K,
            partial,
            H,
            N2,
            L,
            per_program,
            grad_K.stride(0),
            grad_K.stride(1),
            *strides,
            ZOH=zoh,
        )
        launchable(_s4d_chain_rule_kernel)[(H,)](
            partial,
            log_dt,
            C,
            log_A_real,
            A_imag,
            d_log_dt,
            d_C,
            d_log_A_real,
            d_A_imag,
            H,
            N2,
            chunks,
            *strides,
            ZOH=zoh,
            BLOCK_N=CHAIN_BLOCK_N,
            num_warps=CHAIN_WARPS,
        )
    return d_log_dt, d_C, d_log_A_real, d_A_imag


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered ops
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::s4d_kernel")
def _s4d_kernel_op(log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str) -> Tensor:
    return s4d_kernel_forward(log_dt, C, log_A_real, A_imag, L, method)


@_s4d_kernel_op.register_fake
def _(log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str) -> Tensor:
    H, _ = check_s4d_kernel_inputs(log_dt, C, log_A_real, A_imag, L, method)
    return log_dt.new_empty((H, L), dtype=torch.float32)


@triton_op("zoo::s4d_kernel_backward")
def _s4d_kernel_backward_op(
    grad_K: Tensor, log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return s4d_kernel_backward(grad_K, log_dt, C, log_A_real, A_imag, L, method)


@_s4d_kernel_backward_op.register_fake
def _(grad_K, log_dt, C, log_A_real, A_imag, L, method):
    return (
        torch.empty_like(log_dt, memory_format=torch.contiguous_format),
        C.new_empty(C.shape),
        log_A_real.new_empty(log_A_real.shape),
        A_imag.new_empty(A_imag.shape),
    )


def _setup_context(ctx, inputs, output) -> None:
    log_dt, C, log_A_real, A_imag, L, method = inputs
    ctx.save_for_backward(log_dt, C, log_A_real, A_imag)
    ctx.L, ctx.method = L, method


def _backward(ctx, grad_K: Tensor):
    grads = torch.ops.zoo.s4d_kernel_backward(grad_K, *ctx.saved_tensors, ctx.L, ctx.method)
    return (*grads, None, None)


_s4d_kernel_op.register_autograd(_backward, setup_context=_setup_context)


class _S4DKernelFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers are called directly (fewer dispatches per call);
    ``torch.compile`` traces the registered op ``zoo::s4d_kernel``; both run the same launchers."""

    @staticmethod
    def forward(ctx, log_dt, C, log_A_real, A_imag, L, method):
        ctx.save_for_backward(log_dt, C, log_A_real, A_imag)
        ctx.L, ctx.method = L, method
        return s4d_kernel_forward(log_dt, C, log_A_real, A_imag, L, method)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_K):
        return (*s4d_kernel_backward(grad_K, *ctx.saved_tensors, ctx.L, ctx.method), None, None)


def s4d_kernel(
    log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str = "zoh", backend: str = "auto"
) -> Tensor:
    """The S4D convolution kernel K [H, L] (float32) of docs/semantics.md §4.1 (see the module docstring).

    Args:
        log_dt: ``[H]``; C: ``[H, N2, 2]`` (``torch.view_as_real`` of the complex C [H, N2]);
            log_A_real, A_imag: ``[H, N2]``. Any strides; float32 (float64 on the reference backend).
        L: kernel length (>= 1). method: ``"zoh"`` (S4D's default) or ``"bilinear"``.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`).

    Returns:
        ``[H, L]`` float32 (float64 from the reference with float64 parameters); differentiable in all four
        parameter tensors.
    """
    if not isinstance(log_dt, Tensor):
        raise TypeError(f"log_dt must be a torch.Tensor, got {type(log_dt).__name__}")
    if resolve_backend(backend, log_dt, (torch.float32,)) == "triton":  # the launchers validate their inputs
        return dispatch_triton(
            log_dt,
            C,
            log_A_real,
            A_imag,
            L,
            method,
            op=torch.ops.zoo.s4d_kernel,
            function=_S4DKernelFunction,
            launcher=s4d_kernel_forward,
        )
    return s4d_kernel_reference(log_dt, C, log_A_real, A_imag, L, method)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------


def aot_specs() -> list:
    """Compile specs (zoo/kernels/_aot.py): every autotune configuration of the forward and backward Vandermonde
    kernels (float32 parameters and kernels; the coefficients in float64) for ZOH with the launch-time
    specialisations of S4D's sizes (N2, L and the chunk length multiples of 16, contiguous parameters and grad_K),
    the first configuration for bilinear, and the first of each without them (odd sizes, strided parameters and
    grad_K); the chain-rule kernel for both methods, aligned and odd."""
    from zoo.kernels._aot import KernelSpec

    aligned = {
        "N2": "i32:16",
        "L": "i32:16",
        "H": "i32",
        "chunks": "i32",
        "l_per_program": "i32:16",
        "stride_dh": "i32:16",
        "stride_dl": "i32:1",
        "s_dt": "i32:1",
        "sc_h": "i32:16",
        "sc_n": "i32",
        "sc_c": "i32:1",
        "sar_h": "i32:16",
        "sar_n": "i32:1",
        "sai_h": "i32:16",
        "sai_n": "i32:1",
    }
    generic = dict.fromkeys(aligned, "i32")
    chain = triton.Config(dict(BLOCK_N=CHAIN_BLOCK_N_GPU), num_warps=1)
    specs = []
    for kernel, configs in (
        (_s4d_vandermonde_fwd_kernel, _FWD_CONFIGS),
        (_s4d_vandermonde_bwd_kernel, _BWD_CONFIGS),
        (_s4d_chain_rule_kernel, [chain]),
    ):
        variants = [("", aligned, config, True) for config in configs]
        variants += [(",bilinear", aligned, configs[0], False), (",odd", generic, configs[0], True)]
        for label, ints, config, zoh in variants:
            constexprs = dict(config.kwargs, ZOH=zoh)
            signature = {
                name: "*fp32:16" if name.endswith("_ptr") else ints[name]
                for name in kernel.arg_names
                if name not in constexprs
            }
            tiles = ",".join(f"{name[6:]}{value}" for name, value in config.kwargs.items())
            specs.append(
                KernelSpec(
                    name=f"{kernel.__name__}[fp32,{tiles},w{config.num_warps}{label}]",
                    fn=kernel,
                    signature=signature,
                    constexprs=constexprs,
                    num_warps=config.num_warps,
                )
            )
    return specs + benchmark_specs()


SSM_BENCHMARKS = ((1024, 64, 16384), (768, 64, 4096))  # scripts/benchmark.py: ssm_cases, (H, N, L)


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops): every autotune configuration of both Vandermonde kernels
    at the benchmarked sizes (ZOH), with the arguments the launchers pass (contiguous parameters and grad_K) and
    the useful work of a program: the H x N2 x L terms C'[h, n] exp(z[h, n] l) (mode-position pairs) over the
    grid. The forward loops over the modes in blocks of BLOCK_N and inside over its chunk of positions in steps
    of BLOCK_L, the backward over its chunk of positions in steps of BLOCK_L; the chain-rule kernel (one program
    per channel) over the modes in blocks of CHAIN_BLOCK_N_GPU and, inside, over the chunks (its unit: a mode).
    The first configuration of each kernel at
    the first size is compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    pointers = ("log_dt_ptr", "c_ptr", "lar_ptr", "aim_ptr", "k_ptr", "scratch_ptr", "dk_ptr", "partial_ptr")
    pointers += ("d_log_dt_ptr", "dc_ptr", "d_lar_ptr", "d_aim_ptr")
    chain = triton.Config(dict(BLOCK_N=CHAIN_BLOCK_N_GPU), num_warps=1)
    for H, N, L in SSM_BENCHMARKS:
        N2 = N // 2
        case = f"H{H}xN{N}xL{L}"
        terms = H * N2 * L
        per_program = _l_per_program(L, H * cdiv(N2, 32))
        chunks = cdiv(L, per_program)
        fwd_per_program = _l_per_program(L, H)
        fwd_chunks = cdiv(L, fwd_per_program)
        for kernel, configs in (
            (_s4d_vandermonde_fwd_kernel, _FWD_CONFIGS),
            (_s4d_vandermonde_bwd_kernel, _BWD_CONFIGS),
            (_s4d_chain_rule_kernel, [chain]),
        ):
            for index, config in enumerate(configs):
                block_n = config.kwargs["BLOCK_N"]
                block_l = config.kwargs.get("BLOCK_L")
                unit, units = "term", terms
                l_per_program = per_program
                if kernel is _s4d_vandermonde_fwd_kernel:
                    l_per_program = fwd_per_program
                    programs = H * fwd_chunks
                    lengths = [min(fwd_per_program, L - start) for start in range(0, L, fwd_per_program)]
                    trips = (cdiv(N2, block_n), sum(cdiv(n, block_l) for n in lengths) / fwd_chunks)
                    what = (
                        f"programs = H x {fwd_chunks} chunks of {fwd_per_program} = {programs}; loop over "
                        f"cdiv({N2}, {block_n}) mode blocks, inside over the chunk in steps of {block_l}"
                    )
                elif kernel is _s4d_vandermonde_bwd_kernel:
                    programs = H * cdiv(N2, block_n) * chunks
                    lengths = [min(per_program, L - start) for start in range(0, L, per_program)]
                    trips = (sum(cdiv(length, block_l) for length in lengths) / chunks,)
                    what = (
                        f"programs = H cdiv(N2, {block_n}) x {chunks} chunks of {per_program} = {programs}; loop over "
                        f"a chunk in steps of {block_l}"
                    )
                else:
                    unit, units, programs = "mode", H * N2, H
                    trips = (cdiv(N2, block_n), chunks)
                    what = (
                        f"programs = H = {H}; loop over cdiv({N2}, {block_n}) mode blocks, inside over {chunks} chunks"
                    )
                args = dict(
                    **dict.fromkeys(pointers, "*fp32"),
                    H=H,
                    N2=N2,
                    L=L,
                    chunks=chunks,
                    l_per_program=l_per_program,
                    stride_dh=L,
                    stride_dl=1,
                    s_dt=1,
                    sc_h=2 * N2,
                    sc_n=2,
                    sc_c=1,
                    sar_h=N2,
                    sar_n=1,
                    sai_h=N2,
                    sai_n=1,
                    ZOH=True,
                    **config.kwargs,
                )
                names = {p.name for p in kernel.params}
                tiles = ",".join(f"{name[6:]}{value}" for name, value in config.kwargs.items())
                specs.append(
                    launch_spec(
                        f"{kernel.__name__}[fp32,{tiles},w{config.num_warps}]@{case}",
                        kernel,
                        {name: value for name, value in args.items() if name in names},
                        num_warps=config.num_warps,
                        num_stages=config.num_stages,
                        work=Work(
                            case,
                            unit,
                            units / programs,
                            trips,
                            f"{unit}s = {'H N2 L' if unit == 'term' else 'H N2'} = {units}; {what}",
                        ),
                        ci=index == 0 and H == 1024,
                    )
                )
    return specs
