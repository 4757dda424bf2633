"""Triton kernels with plain-PyTorch references (one file per operator; see DESIGN.md).

Set ``TRITON_INTERPRET=1`` before importing this package to run the Triton kernels on CPU tensors through the
interpreter (tests); otherwise ``backend="auto"`` runs Triton on CUDA tensors and the reference elsewhere.
"""

from kernels._backend import BACKENDS, resolve_backend
from kernels.dwconv import dwconv2d, dwconv2d_reference, inception_dwconv2d, inception_dwconv2d_reference
from kernels.rational import group_rational, group_rational_reference

__all__ = [
    "BACKENDS",
    "dwconv2d",
    "dwconv2d_reference",
    "group_rational",
    "group_rational_reference",
    "inception_dwconv2d",
    "inception_dwconv2d_reference",
    "resolve_backend",
]
