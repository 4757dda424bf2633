"""Triton kernels with plain-PyTorch references (one file per operator; see docs/design.md §2); imports only torch and
triton.

Set ``TRITON_INTERPRET=1`` before importing this package to run the Triton kernels on CPU tensors through the
interpreter (tests); otherwise ``backend="auto"`` runs Triton on CUDA tensors and the reference elsewhere.
"""

from zoo.kernels._backend import BACKENDS, resolve_backend
from zoo.kernels.batch_norm_add import (
    batch_norm_add_reference,
)  # the op itself: zoo.kernels.batch_norm_add.batch_norm_add (the name is the module's)
from zoo.kernels.batch_norm_se import (
    batch_norm_se_reference,
)  # the op itself: zoo.kernels.batch_norm_se.batch_norm_se (the name is the module's)
from zoo.kernels.dwconv import dwconv2d, dwconv2d_reference, inception_dwconv2d, inception_dwconv2d_reference
from zoo.kernels.fftconv import (
    fftconv_reference,
)  # the op itself: zoo.kernels.fftconv.fftconv (the name is the module's)
from zoo.kernels.gelu_grn import (
    gelu_grn_reference,
)  # the op itself: zoo.kernels.gelu_grn.gelu_grn (the name is the module's)
from zoo.kernels.norm_rational import layer_norm_group_rational, layer_norm_group_rational_reference
from zoo.kernels.rational import group_rational, group_rational_reference
from zoo.kernels.ssm import s4d_kernel, s4d_kernel_reference

__all__ = [
    "BACKENDS",
    "batch_norm_add_reference",
    "batch_norm_se_reference",
    "dwconv2d",
    "dwconv2d_reference",
    "fftconv_reference",
    "gelu_grn_reference",
    "group_rational",
    "group_rational_reference",
    "inception_dwconv2d",
    "inception_dwconv2d_reference",
    "layer_norm_group_rational",
    "layer_norm_group_rational_reference",
    "resolve_backend",
    "s4d_kernel",
    "s4d_kernel_reference",
]
