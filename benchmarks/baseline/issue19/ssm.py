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
memory (the H x N x L tensor is never formed). The backward kernel reduces over l in registers per (h, block of
modes, chunk of l) and a second pass adds the chunks (no atomics, deterministic). The kernels compute in fp32;
the O(H N) map between the parameters and (C', z) and its chain rule run in PyTorch in complex128 (they cancel
digits when |dtA| is small) and are rounded to float32 once.

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import (
    INTERPRETER,
    check_triton_device,
    device_guard,
    dispatch_triton,
    resolve_backend,
    tl,
    triton,
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
# The per-mode coefficients arrive as four contiguous float32 [H, N2] planes: Re C', Im C', Re z, Im z.
# ----------------------------------------------------------------------------------------------------------------


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
    cr_ptr,
    ci_ptr,
    zr_ptr,
    zi_ptr,
    k_ptr,
    N2,
    L,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """K[h, l] = 2 Re(sum_n C'[h, n] exp(z[h, n] l)) for one channel h (program axis 0) and BLOCK_L positions
    (axis 1), looping over the modes in blocks of BLOCK_N; the tile sums are reduced over n once at the end."""
    h = tl.program_id(0).to(tl.int64)
    pos = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    l_mask = pos < L
    lf = tl.where(l_mask, pos, 0).to(tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_L), dtype=tl.float32)
    for start in range(0, N2, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = n < N2
        cr = tl.load(cr_ptr + h * N2 + n, mask=n_mask, other=0.0)
        ci = tl.load(ci_ptr + h * N2 + n, mask=n_mask, other=0.0)
        zr = tl.load(zr_ptr + h * N2 + n, mask=n_mask, other=0.0)
        zi = tl.load(zi_ptr + h * N2 + n, mask=n_mask, other=0.0)
        wr, wi = _powers(zr, zi, lf)
        acc += cr[:, None] * wr - ci[:, None] * wi
    tl.store(k_ptr + h * L + pos, 2.0 * tl.sum(acc, axis=0), mask=l_mask)


@triton.jit
def _s4d_vandermonde_bwd_kernel(
    cr_ptr,
    ci_ptr,
    zr_ptr,
    zi_ptr,
    dk_ptr,
    partial_ptr,
    H,
    N2,
    L,
    l_per_program,
    stride_dh,
    stride_dl,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Gradients of the coefficients for one channel (axis 0), BLOCK_N modes (axis 1) and a chunk of
    l_per_program positions (axis 2): with S = sum_l dK[l] exp(z l) and T = sum_l dK[l] l exp(z l) (reduced in
    registers), d C' = 2 conj(S) and d z = 2 conj(C' T) (as d Re + i d Im), written to
    ``partial[chunk, 0..3, h, n]``; the chunks are added by a second pass."""
    h = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk = tl.program_id(2)
    n_mask = n < N2
    cr = tl.load(cr_ptr + h * N2 + n, mask=n_mask, other=0.0)
    ci = tl.load(ci_ptr + h * N2 + n, mask=n_mask, other=0.0)
    zr = tl.load(zr_ptr + h * N2 + n, mask=n_mask, other=0.0)
    zi = tl.load(zi_ptr + h * N2 + n, mask=n_mask, other=0.0)
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


def _configs(rows: tuple[tuple[int, int, int], ...]) -> list:
    return [triton.Config(dict(BLOCK_N=n, BLOCK_L=block_l), num_warps=w) for n, block_l, w in rows]


# A fixed tiny configuration under the interpreter (CPU tests: odd test sizes span several tiles); on the GPU,
# tiles autotuned per (N2, L). The backward holds four accumulator tiles, so its tiles are smaller.
if INTERPRETER:
    _FWD_CONFIGS = _configs(((4, 8, 1),))
    _BWD_CONFIGS = _configs(((4, 8, 1),))
else:
    _FWD_CONFIGS = _configs(((16, 128, 4), (32, 128, 4), (32, 256, 8), (16, 256, 4), (32, 64, 4)))
    _BWD_CONFIGS = _configs(((16, 64, 4), (32, 64, 4), (16, 128, 8), (32, 128, 8), (64, 32, 8)))

_s4d_fwd = triton.autotune(configs=_FWD_CONFIGS, key=["N2", "L"])(_s4d_vandermonde_fwd_kernel)
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


def _float64(*params: Tensor) -> list[Tensor]:
    """The parameters in float64 for the O(H N2) maps around the kernels: (exp(dtA) - 1) / A and the chain rule
    through it cancel digits when |dtA| is small (dt ~ 1e-3), so they run in complex128 and their results are
    rounded to float32 once."""
    return [t.double() for t in params]


def _planes(coeff: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four contiguous float32 [H, N2] planes the kernels read: Re C', Im C', Re z, Im z."""
    stacked = torch.stack((coeff.real, coeff.imag, z.real, z.imag)).to(torch.float32).contiguous()
    return stacked[0], stacked[1], stacked[2], stacked[3]


def _l_per_program(L: int, parallel_programs: int) -> int:
    """Positions each backward program reduces: enough programs to fill a GPU (about 1000), each reducing at
    least 1024 positions."""
    if INTERPRETER:
        return 16  # several chunks even for tiny test lengths
    chunks = max(1, min(triton.cdiv(1024, parallel_programs), triton.cdiv(L, 1024)))
    return triton.cdiv(L, chunks)


def s4d_kernel_forward(
    log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str = "zoh"
) -> Tensor:
    """Triton forward of :func:`s4d_kernel`: K [H, L] float32. The O(H N2) coefficients (C', z) are formed in
    PyTorch (complex128, rounded to float32), the O(H N2 L) Vandermonde product in one launch with O(H (N2 + L))
    memory."""
    H, N2 = _check_triton_inputs(log_dt, C, log_A_real, A_imag, L, method)
    K = torch.empty((H, L), dtype=torch.float32, device=log_dt.device)
    if H == 0 or N2 == 0:
        return K.zero_()
    planes = _planes(*_coefficients(*_float64(log_dt, C, log_A_real, A_imag), method))

    def grid(meta):
        return (H, triton.cdiv(L, meta["BLOCK_L"]))

    with device_guard(log_dt.device):
        _s4d_fwd[grid](*planes, K, N2, L)
    return K


def _parameter_grads(
    G_coeff: Tensor, G_z: Tensor, log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, method: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chain rule from the coefficient gradients (G = dL/dRe + i dL/dIm) to the parameters (complex128).

    For a holomorphic w = f(u): G_u = G_w conj(f'(u)); for a real x with w = f(x): dL/dx = Re(G_w conj(f'(x))).
    Conjugates are physical: lazy ``conj()`` views gave wrong values when AOTAutograd runs the op (opcheck)."""
    dt = torch.exp(log_dt)[:, None]
    a = torch.exp(log_A_real)
    A = torch.complex(-a, A_imag)
    w = A * dt
    Cc = torch.complex(C[..., 0], C[..., 1])
    if method == "zoh":  # C' = C (exp(w) - 1) / A, z = w = A dt
        E = torch.exp(w)
        B = (E - 1) / A
        G_C = G_coeff * B.conj_physical()
        G_B = G_coeff * Cc.conj_physical()
        G_A = G_B * ((dt * E - B) / A).conj_physical() + G_z * dt
        g_dt = (G_B * E.conj_physical()).real + (G_z * A.conj_physical()).real
    else:  # C' = C dt / (1 - w / 2), z = log(1 + w / 2) - log(1 - w / 2)
        den, num = 1 - w / 2, 1 + w / 2
        G_C = G_coeff * (dt / den).conj_physical()
        G_w = G_coeff * (Cc * dt / (2 * den * den)).conj_physical() + G_z * (1 / (num * den)).conj_physical()
        G_A = G_w * dt
        g_dt = (G_coeff * (Cc / den).conj_physical()).real + (G_w * A.conj_physical()).real
    d_log_dt = (g_dt * dt).sum(1)
    return d_log_dt, torch.stack((G_C.real, G_C.imag), dim=-1), -a * G_A.real, G_A.imag.contiguous()


def s4d_kernel_backward(
    grad_K: Tensor, log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str = "zoh"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton backward of :func:`s4d_kernel`: (d log_dt, d C, d log_A_real, d A_imag), float32, given
    grad_K [H, L] (any strides). One launch reduces over l (per channel, block of modes and chunk of l), a
    second pass adds the chunks; the O(H N2) chain rule to the parameters runs in PyTorch."""
    H, N2 = _check_triton_inputs(log_dt, C, log_A_real, A_imag, L, method)
    if not isinstance(grad_K, Tensor) or grad_K.shape != (H, L):
        shape = list(grad_K.shape) if isinstance(grad_K, Tensor) else type(grad_K).__name__
        raise ValueError(f"grad_K must have the output's shape [H, L] = [{H}, {L}], got {shape}")
    if grad_K.device != log_dt.device:
        raise ValueError(f"grad_K must be on the device of log_dt ({log_dt.device}), got {grad_K.device}")
    if H == 0 or N2 == 0:
        return (torch.zeros_like(log_dt), torch.zeros_like(C), torch.zeros_like(log_A_real), torch.zeros_like(A_imag))
    params = _float64(log_dt, C, log_A_real, A_imag)
    planes = _planes(*_coefficients(*params, method))
    per_program = _l_per_program(L, H * triton.cdiv(N2, 32))
    chunks = triton.cdiv(L, per_program)
    partial = torch.empty((chunks, 4, H, N2), dtype=torch.float32, device=log_dt.device)

    def grid(meta):
        return (H, triton.cdiv(N2, meta["BLOCK_N"]), chunks)

    with device_guard(log_dt.device):
        _s4d_bwd[grid](*planes, grad_K, partial, H, N2, L, per_program, grad_K.stride(0), grad_K.stride(1))
    sums = partial.sum(0).double()
    G_coeff = torch.complex(sums[0], sums[1])
    G_z = torch.complex(sums[2], sums[3])
    return tuple(g.float().contiguous() for g in _parameter_grads(G_coeff, G_z, *params, method))


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered ops
# ----------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("zoo::s4d_kernel", mutates_args=())
def _s4d_kernel_op(log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str) -> Tensor:
    return s4d_kernel_forward(log_dt, C, log_A_real, A_imag, L, method)


@_s4d_kernel_op.register_fake
def _(log_dt: Tensor, C: Tensor, log_A_real: Tensor, A_imag: Tensor, L: int, method: str) -> Tensor:
    H, _ = check_s4d_kernel_inputs(log_dt, C, log_A_real, A_imag, L, method)
    return log_dt.new_empty((H, L), dtype=torch.float32)


@torch.library.custom_op("zoo::s4d_kernel_backward", mutates_args=())
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
    @torch.autograd.function.once_differentiable
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
    kernels (float32 only: the kernels compute in fp32) with the launch-time specialisations of S4D's sizes (N2,
    L and the chunk length multiples of 16, grad_K contiguous), and the first configuration of each without
    them (odd sizes, a strided grad_K)."""
    from zoo.kernels._aot import KernelSpec

    specs = []
    for kernel, configs in ((_s4d_vandermonde_fwd_kernel, _FWD_CONFIGS), (_s4d_vandermonde_bwd_kernel, _BWD_CONFIGS)):
        aligned = {
            "N2": "i32:16",
            "L": "i32:16",
            "H": "i32",
            "l_per_program": "i32:16",
            "stride_dh": "i32:16",
            "stride_dl": "i32:1",
        }
        generic = dict.fromkeys(aligned, "i32")
        variants = [("", aligned, config) for config in configs] + [(",odd", generic, configs[0])]
        for label, ints, config in variants:
            signature = {
                name: "*fp32:16" if name.endswith("_ptr") else ints[name]
                for name in kernel.arg_names
                if name not in config.kwargs
            }
            specs.append(
                KernelSpec(
                    name=f"{kernel.__name__}[fp32,N{config.kwargs['BLOCK_N']},L{config.kwargs['BLOCK_L']},"
                    f"w{config.num_warps}{label}]",
                    fn=kernel,
                    signature=signature,
                    constexprs=dict(config.kwargs),
                    num_warps=config.num_warps,
                )
            )
    return specs + benchmark_specs()


SSM_BENCHMARKS = ((1024, 64, 16384), (768, 64, 4096))  # scripts/benchmark.py: ssm_cases, (H, N, L)


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops): every autotune configuration of both Vandermonde kernels
    at the benchmarked sizes, with the arguments the launchers pass (contiguous planes and grad_K) and the
    useful work of a program: the H x N2 x L terms C'[h, n] exp(z[h, n] l) (mode-position pairs) over the grid.
    The forward loops over the modes in blocks of BLOCK_N, the backward over its chunk of positions in blocks of
    BLOCK_L. The first configuration of each kernel at the first size is compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    planes = dict.fromkeys(("cr_ptr", "ci_ptr", "zr_ptr", "zi_ptr", "k_ptr", "dk_ptr", "partial_ptr"), "*fp32")
    for H, N, L in SSM_BENCHMARKS:
        N2 = N // 2
        case = f"H{H}xN{N}xL{L}"
        terms = H * N2 * L
        per_program = _l_per_program(L, H * triton.cdiv(N2, 32))
        chunks = triton.cdiv(L, per_program)
        for kernel, configs in (
            (_s4d_vandermonde_fwd_kernel, _FWD_CONFIGS),
            (_s4d_vandermonde_bwd_kernel, _BWD_CONFIGS),
        ):
            for index, config in enumerate(configs):
                block_n, block_l = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_L"]
                if kernel is _s4d_vandermonde_fwd_kernel:
                    programs = H * triton.cdiv(L, block_l)
                    trips = triton.cdiv(N2, block_n)
                    what = f"programs = H cdiv(L, {block_l}) = {programs}; loop over cdiv({N2}, {block_n}) mode blocks"
                else:
                    programs = H * triton.cdiv(N2, block_n) * chunks
                    lengths = [min(per_program, L - start) for start in range(0, L, per_program)]
                    trips = sum(triton.cdiv(length, block_l) for length in lengths) / chunks
                    what = (
                        f"programs = H cdiv(N2, {block_n}) x {chunks} chunks of {per_program} = {programs}; loop over "
                        f"a chunk in steps of {block_l}"
                    )
                args = dict(
                    **planes,
                    H=H,
                    N2=N2,
                    L=L,
                    l_per_program=per_program,
                    stride_dh=L,
                    stride_dl=1,
                    **config.kwargs,
                )
                names = {p.name for p in kernel.params}
                specs.append(
                    launch_spec(
                        f"{kernel.__name__}[fp32,N{block_n},L{block_l},w{config.num_warps}]@{case}",
                        kernel,
                        {name: value for name, value in args.items() if name in names},
                        num_warps=config.num_warps,
                        num_stages=config.num_stages,
                        work=Work(
                            case, "term", terms / programs, (trips,), f"terms = H N2 L = {terms}; {what}: {trips:g}"
                        ),
                        ci=index == 0 and H == 1024,
                    )
                )
    return specs
