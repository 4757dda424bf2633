"""Neural-network modules of the zoo; parameters are named as in the official checkpoints (docs/semantics.md)."""

from timm.layers import register_notrace_module

from zoo.layers.inception import InceptionDWConv2d
from zoo.layers.kan import KAN
from zoo.layers.longconv import LongConv, LongConvKernel
from zoo.layers.neighborhood import (
    NeighborhoodAttention,
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
)
from zoo.layers.rational import RATIONAL_INITS, GroupRational, RationalInit, variance_preserving_gain
from zoo.layers.s4d import S4D, S4D_INITS, S4DKernel, s4d_init
from zoo.layers.unireplknet import (
    DILATED_BRANCHES,
    GRN,
    DepthwiseConv2d,
    DilatedReparamBlock,
    SEBlock,
    UniRepLKNetBlock,
)

# These modules check shapes in Python and call custom ops: leaves for torch.fx tracing (timm's FX tests).
register_notrace_module(GroupRational)
register_notrace_module(InceptionDWConv2d)
register_notrace_module(DepthwiseConv2d)
register_notrace_module(DilatedReparamBlock)
register_notrace_module(GRN)  # chooses its norm's formulation by device and dtype
register_notrace_module(S4D)
register_notrace_module(LongConv)
for _module in (NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D):
    register_notrace_module(_module)

__all__ = [
    "DILATED_BRANCHES",
    "GRN",
    "KAN",
    "LongConv",
    "LongConvKernel",
    "NeighborhoodAttention",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "RATIONAL_INITS",
    "DepthwiseConv2d",
    "DilatedReparamBlock",
    "GroupRational",
    "InceptionDWConv2d",
    "RationalInit",
    "S4D",
    "S4DKernel",
    "S4D_INITS",
    "SEBlock",
    "UniRepLKNetBlock",
    "s4d_init",
    "variance_preserving_gain",
]
