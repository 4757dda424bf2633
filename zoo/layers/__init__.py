"""Neural-network modules of the zoo; parameters are named as in the official checkpoints (SPEC.md)."""

from timm.layers import register_notrace_module

from zoo.layers.inception import InceptionDWConv2d
from zoo.layers.kan import KAN
from zoo.layers.rational import RATIONAL_INITS, GroupRational, RationalInit, variance_preserving_gain
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

__all__ = [
    "DILATED_BRANCHES",
    "GRN",
    "KAN",
    "RATIONAL_INITS",
    "DepthwiseConv2d",
    "DilatedReparamBlock",
    "GroupRational",
    "InceptionDWConv2d",
    "RationalInit",
    "SEBlock",
    "UniRepLKNetBlock",
    "variance_preserving_gain",
]
