"""Deployment of the zoo's models outside PyTorch: :func:`zoo.deploy.onnx.export_onnx` writes an ONNX graph of
standard operators (the ops' PyTorch paths, UniRepLKNet and InceptionNeXt re-parameterised, the sequence models'
convolutions with their kernels materialised). onnx, onnxruntime and onnxscript are the ``onnx`` extra
(``pip install "triton-zoo[onnx]"``); they are imported only when an export runs.
"""

from zoo.deploy.onnx import OnnxExportError, export_onnx

__all__ = ["OnnxExportError", "export_onnx"]
