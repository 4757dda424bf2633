"""The group-rational activation on the CPU (docs/semantics.md §1): what ``backend="auto"`` runs on CPU tensors.

The reference (``backend="torch"``, :func:`zoo.kernels.rational.group_rational_reference`) builds every power of x
and of |x| as its own tensor and lets autograd record about twenty elementwise passes forward and more backward.
This path evaluates the same function with Horner's rule,

    N(x) = a0 + x (a1 + x (a2 + x (a3 + x (a4 + x a5))))
    D(x) = 1 + |x| (|b0| + |x| (|b1| + |x| (|b2| + |x| |b3|)))

and writes the backward out by hand (:func:`rational_backward_math`): with q = dy / D and y = N / D,

    dx = q (N'(x) - y D'(|x|) s(x)),   da_i = sum q x^i,   db_j = -s(b_j) sum_group q y |x|^(j+1)

(s the sign with s(0) = +1, the op's convention for |x| and |b|). Both functions are written once in PyTorch and
run one of two ways, chosen per call (zoo/kernels/_cpu_compile.py):

* **compiled** (the default where it works, for calls on at least ``COMPILE_MIN_ELEMENTS`` elements): each
  function compiled once per (kind, dtype, thread count) by
  ``torch.compile``'s CPU backend (Inductor, dynamic shapes: one compile serves every size), which fuses it into a
  single vectorised C++ loop that reads each element once (the backward into a few fused loops: dx and the
  coefficient sums). It needs a C++ compiler; the first call of each kind pays the compile (measured on a loaded 2-core
  EPYC, ``scripts/benchmark_cpu.py first-call``: 34 s forward and 9 s backward with an empty Inductor cache, 6 s and
  1 s in a later process that finds Inductor's disk cache);
* **eager** (no compiler, ``torch.compile`` unavailable, a failed compile, or ``ZOO_CPU_COMPILE=0``): the same
  functions run op by op, in place (Horner: about ten passes forward, no autograd graph), about 10x faster than
  the reference and still exact to rounding.

Inside ``torch.compile`` / ``torch.export`` (a user compiling the model) and under ``torch.jit.trace`` the dispatch
takes the reference instead (:func:`zoo.kernels.rational.group_rational`): its ops are what those tracers record.
Arithmetic in float32 (float64 for float64 inputs), outputs in the dtypes of their inputs, as the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import once_differentiable
from zoo.kernels._cpu_compile import COMPILE_ENV_VAR, compile_enabled, run

__all__ = [
    "COMPILE_ENV_VAR",
    "compile_enabled",
    "group_rational_cpu",
    "rational_backward_math",
    "rational_forward_math",
]


def _sign(t: Tensor) -> Tensor:
    """+1 where t >= 0 (-0 too), -1 elsewhere: the op's sign, +1 at 0. In arithmetic, sign(sign(t) + 1/2): a
    ``torch.where`` on a boolean mask runs over ten times slower on the CPU (eager), and Inductor folds away the
    ``t + 0`` that would make ``copysign`` take -0 for +0."""
    return t.sign().add_(0.5).sign_()


def _compute(x: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x, the 6 numerator and the [G, 4] denominator coefficients in the compute dtype (float32, or float64)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return x.to(dtype), a.to(dtype).reshape(6), b.to(dtype)


def rational_forward_math(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """F(x) on ``x`` [M, G, D/G] for coefficients ``a`` [1, 6] and ``b`` [G, 4] by Horner's rule, in place after
    the first product (no autograd graph is meant to be recorded). Returns [M, G, D/G] in the dtype of ``x``."""
    xc, a, b = _compute(x, a, b)
    bb = b.abs().unsqueeze(-1)  # [G, 4, 1]
    num = xc * a[5]
    for i in (4, 3, 2, 1):
        num.add_(a[i]).mul_(xc)
    num.add_(a[0])
    ax = xc.abs()
    den = ax * bb[:, 3]
    for j in (2, 1, 0):
        den.add_(bb[:, j]).mul_(ax)
    den.add_(1.0)
    return num.div_(den).to(x.dtype)


def rational_backward_math(dy: Tensor, x: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients (dx, da, db) of F for output gradient ``dy``, both [M, G, D/G], and ``a`` [1, 6], ``b``
    [G, 4] (see the module docstring for the formulas). dx has the dtype of ``x``, da and db those of ``a``, ``b``;
    the sums are taken in the compute dtype."""
    xc, a6, bc = _compute(x, a, b)
    sb = _sign(bc)
    bb = (bc * sb).unsqueeze(-1)  # |b| [G, 4, 1]
    sx = _sign(xc)
    ax = xc.abs()
    num = xc * a6[5]
    dnum = xc * (5 * a6[5])
    for i in (4, 3, 2, 1):
        num.add_(a6[i]).mul_(xc)
    num.add_(a6[0])
    for i in (4, 3, 2):
        dnum.add_(i * a6[i]).mul_(xc)
    dnum.add_(a6[1])
    den = ax * bb[:, 3]
    dden = ax * (4 * bb[:, 3])
    for j in (2, 1, 0):
        den.add_(bb[:, j]).mul_(ax)
    den.add_(1.0)
    for j in (2, 1):
        dden.add_((j + 1) * bb[:, j]).mul_(ax)
    dden.add_(bb[:, 0])
    q = dy.to(xc.dtype).div(den)
    y = num.div_(den)
    dx = dnum.sub_(dden.mul_(sx).mul_(y)).mul_(q)  # q (N' - y D' s(x)); in place, as every pass that can be
    power, da = q.clone(), [q.sum()]
    for _ in range(5):
        da.append(power.mul_(xc).sum())
    power, db = q.mul_(y), []
    for _ in range(4):
        db.append(power.mul_(ax).sum((0, 2)))
    db = torch.stack(db, -1).mul_(sb).neg_()
    return dx.to(x.dtype), torch.stack(da).reshape(a.shape).to(a.dtype), db.to(b.dtype)


class _GroupRationalCPU(torch.autograd.Function):
    """Autograd for the CPU path: the forward saves x and the coefficients, the backward recomputes N, D from them
    (one fused loop) instead of keeping intermediates."""

    @staticmethod
    def forward(ctx, x3: Tensor, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x3, a, b)
        return run("rational_forward", rational_forward_math, x3, a, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x3, a, b = ctx.saved_tensors
        return run("rational_backward", rational_backward_math, grad_output, x3, a, b)


def group_rational_cpu(x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor) -> Tensor:
    """The group-rational activation on validated CPU inputs (see the module docstring and
    :func:`zoo.kernels.rational.group_rational`): ``x`` [..., D], ``weight_numerator`` [1, 6],
    ``weight_denominator`` [G, 4]. Returns F(x) in the shape and dtype of ``x``, differentiable in all three."""
    groups = weight_denominator.shape[0]
    x3 = x.reshape(-1, groups, x.shape[-1] // groups)  # x non-empty: the dispatch sends empty tensors elsewhere
    args = (x3, weight_numerator, weight_denominator)
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        y = _GroupRationalCPU.apply(*args)
    else:
        y = run("rational_forward", rational_forward_math, *args)
    return y.reshape(x.shape)
