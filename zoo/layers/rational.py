"""``GroupRational``: the learnable group-rational activation of KAT (GR-KAN), as an ``nn.Module``."""

from __future__ import annotations

import math
from functools import cache
from typing import NamedTuple

import torch
from torch import Tensor, nn

from zoo.kernels.rational import DENOMINATOR_TERMS, NUMERATOR_TERMS, group_rational


class RationalInit(NamedTuple):
    """Initial coefficients: numerator a0..a5 (shared), denominator b0..b3 (copied to every group)."""

    numerator: tuple[float, ...]
    denominator: tuple[float, ...]


RATIONAL_INITS: dict[str, RationalInit] = {
    # F(x) = x exactly; b = 0 exactly (its gradient is non-zero thanks to the +1-at-zero convention).
    "identity": RationalInit((0.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
    # The official fit of x * sigmoid(x) (Adamdad/rational_kat_cu, kat_rational/init.json, "swish").
    "swish": RationalInit(
        (
            3.054879741161051e-07,
            0.5000007853744493,
            0.24999783422824703,
            0.05326628273219478,
            0.005803034571292244,
            0.0002751961022402342,
        ),
        (-4.111554955950634e-06, 0.10652899335007572, -1.2690007399796238e-06, 0.0005502331264140556),
    ),
    # Our fit of the exact (erf) GELU for THIS form on [-3, 3] (scripts/fit_gelu_rational.py): max |F - GELU| =
    # 2.093e-3 there (GELU_INIT_MAX_ERROR). The official "gelu" entry fits another form and is off by up to 1.46.
    "gelu": RationalInit(
        (-0.00124786035, 0.512159735, 0.420667886, 0.131740231, 0.0238153132, 0.00264945333),
        (0.0758668558, 0.182492529, 0.03525754, -2.35760555e-11),
    ),
}

# The documented bound of the stored "gelu" init: max |F - GELU| on [-3, 3] (the exact, erf GELU), measured 2.093e-3.
# Re-running scripts/fit_gelu_rational.py lands within 10% of it (its coefficients may differ: the fit's path
# depends on the machine's floating-point summation order).
GELU_INIT_MAX_ERROR = 2.1e-3


@cache
def variance_preserving_gain(init: str) -> float:
    """sqrt(1 / E[F(x)^2]) for x ~ N(0, 1), F the rational activation at ``init``.

    The weight after F drawn with std gain / sqrt(fan_in) keeps unit variance through F (KAT's
    variance-preserving init). Computed by quadrature in float64 on [-12, 12]: swish 2.8108^(1/2), gelu
    2.3516^(1/2) (the official code hard-codes 2.8178 and 2.3568).
    """
    if init not in RATIONAL_INITS:
        raise ValueError(f"init must be one of {sorted(RATIONAL_INITS)}, got {init!r}")
    coefficients = RATIONAL_INITS[init]
    cpu = torch.device("cpu")  # a number, whatever the default device (models are also built under "meta")
    x = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64, device=cpu)
    a = torch.tensor(coefficients.numerator, dtype=torch.float64, device=cpu).view(1, NUMERATOR_TERMS)
    b = torch.tensor(coefficients.denominator, dtype=torch.float64, device=cpu).view(1, DENOMINATOR_TERMS)
    f = group_rational(x.view(-1, 1), a, b, backend="torch").view(-1)
    density = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return math.sqrt(1.0 / torch.trapezoid(f * f * density, x).item())


class GroupRational(nn.Module):
    """Group-rational activation over the last dimension (KAT's GR-KAN unit; see :mod:`zoo.kernels.rational`).

    The last dimension D of the input is split into ``num_groups`` contiguous groups; each group has its own
    denominator coefficients, the numerator is shared. Parameters (named as in the official checkpoints):
    ``weight_numerator`` [1, 6] and ``weight_denominator`` [num_groups, 4], kept in float32 under AMP; the
    output has the input's dtype and shape. Both carry ``_optim = {"weight_decay": 0.0}``, the per-parameter
    optimiser hint that ``zoo.training`` honours: the coefficients are never weight-decayed.

    Args:
        num_groups: number of channel groups; the input's last dimension must be divisible by it.
        init: ``"identity"``, ``"swish"`` or ``"gelu"`` (see ``RATIONAL_INITS``).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`).
    """

    def __init__(self, num_groups: int = 8, init: str = "swish", backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if init not in RATIONAL_INITS:
            raise ValueError(f"init must be one of {sorted(RATIONAL_INITS)}, got {init!r}")
        self.num_groups = num_groups
        self.init = init
        self.backend = backend
        self.weight_numerator = nn.Parameter(torch.empty(1, NUMERATOR_TERMS))
        self.weight_denominator = nn.Parameter(torch.empty(num_groups, DENOMINATOR_TERMS))
        for parameter in (self.weight_numerator, self.weight_denominator):
            parameter._optim = {"weight_decay": 0.0}  # optimiser hint (state-spaces convention): never decayed
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Set the coefficients to the ``init`` fit (every group gets the same denominator)."""
        coefficients = RATIONAL_INITS[self.init]
        self.weight_numerator.copy_(torch.tensor(coefficients.numerator).view(1, NUMERATOR_TERMS))
        self.weight_denominator.copy_(torch.tensor(coefficients.denominator).expand(self.num_groups, -1))

    def forward(self, x: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
        """F(x) in ``out_dtype`` (default: the dtype of ``x``), rounded once from float32 (see
        :func:`zoo.kernels.rational.group_rational`)."""
        if x.dim() == 0 or x.shape[-1] % self.num_groups:
            raise ValueError(
                f"GroupRational expects input [..., D] with D divisible by num_groups={self.num_groups}, "
                f"got shape {list(x.shape)}"
            )
        return group_rational(
            x, self.weight_numerator, self.weight_denominator, backend=self.backend, out_dtype=out_dtype
        )

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, init={self.init!r}, backend={self.backend!r}"
