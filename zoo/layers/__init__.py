"""Neural-network modules of the zoo; parameters are named as in the official checkpoints (SPEC.md)."""

from timm.layers import register_notrace_module

from zoo.layers.inception import InceptionDWConv2d
from zoo.layers.kan import KAN
from zoo.layers.rational import RATIONAL_INITS, GroupRational, RationalInit, variance_preserving_gain

# These modules check shapes in Python and call custom ops: leaves for torch.fx tracing (timm's FX tests).
register_notrace_module(GroupRational)
register_notrace_module(InceptionDWConv2d)

__all__ = ["KAN", "RATIONAL_INITS", "GroupRational", "InceptionDWConv2d", "RationalInit", "variance_preserving_gain"]
