"""zoo: efficient architectures with hand-written Triton kernels, timm-compatible.

``import zoo`` is light: it imports nothing but the standard library. Its parts load when first used:

* ``zoo.kernels`` - the ops (Triton kernels and their PyTorch references); imports only torch and triton.
* ``zoo.layers``, ``zoo.models``, ``zoo.create_model``, ``zoo.list_models`` - the modules and models (timm).
* ``zoo.training``, ``zoo.data`` - the code behind ``train.py`` / ``zoo-train`` and ``eval.py`` / ``zoo-eval``.
* ``zoo.export_onnx`` (``zoo.deploy``) - ONNX export of any model (``zoo-export``); needs the ``onnx`` extra.

The model families register with timm as soon as both ``zoo`` and ``timm`` are imported, in either order, so
``import zoo; import timm; timm.create_model("kat_t")`` works without touching ``zoo.models`` by hand; a program
that imports only ``zoo.kernels`` never loads timm or the models.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it (loaded on first access, PEP 562).
_LAZY_ATTRIBUTES = {
    "create_model": "zoo.models",
    "list_models": "zoo.models",
    "GroupRational": "zoo.layers",
    "KAN": "zoo.layers",
    "export_onnx": "zoo.deploy.onnx",
}
_SUBPACKAGES = ("data", "kernels", "layers", "models", "training")

__all__ = ["GroupRational", "KAN", "__version__", "create_model", "export_onnx", "list_models", *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"zoo.{name}")
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _RegisterModelsAfterTimm(importlib.abc.MetaPathFinder):
    """Import hook, installed while timm is not yet imported: once timm has loaded, import ``zoo.models`` (which
    registers every family with timm), then step aside.

    The first import of timm may come from inside one of the zoo's own modules (``zoo.layers`` imports timm before
    its submodules), so ``zoo.models`` imports the layer submodules it needs (``zoo.layers.kan``), never names of
    the partially initialised ``zoo.layers`` package. tests/test_imports.py imports every zoo module first, in a
    fresh interpreter, to keep it so.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")  # the finders that would have found it without this hook
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegisterModels(spec.loader)
        return spec


class _ThenRegisterModels(importlib.abc.Loader):
    """timm's own loader, followed by the import of ``zoo.models``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        importlib.import_module("zoo.models")

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: timm's loader answers
        return getattr(self._loader, name)


if "timm" in sys.modules:
    importlib.import_module("zoo.models")
else:
    sys.meta_path.insert(0, _RegisterModelsAfterTimm())
