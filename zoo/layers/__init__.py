"""Neural-network modules of the zoo; parameters are named as in the official checkpoints (SPEC.md)."""

from timm.layers import register_notrace_module

from zoo.layers.kan import KAN
from zoo.layers.rational import RATIONAL_INITS, GroupRational, RationalInit, variance_preserving_gain

# GroupRational checks shapes in Python and calls a custom op: a leaf for torch.fx tracing (timm's FX tests).
register_notrace_module(GroupRational)

__all__ = ["GroupRational", "KAN", "RATIONAL_INITS", "RationalInit", "variance_preserving_gain"]
