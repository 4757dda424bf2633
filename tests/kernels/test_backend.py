"""Backend selection (zoo/kernels/_backend.py): argument > ZOO_BACKEND (read per call) > auto."""

from __future__ import annotations

import pytest
import torch

import zoo.kernels._backend as backend_module
from zoo.kernels._backend import requested_backend, resolve_backend


def test_auto_picks_reference_on_cpu_and_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("ZOO_BACKEND", raising=False)
    assert resolve_backend("auto", torch.empty(1)) == "torch"  # never the interpreter by accident
    assert resolve_backend("auto", torch.empty(1, device="meta")) == "torch"
    if torch.cuda.is_available():
        assert resolve_backend("auto", torch.empty(1, device="cuda")) == "triton"


def test_argument_beats_environment(monkeypatch):
    monkeypatch.setenv("ZOO_BACKEND", "triton")
    assert resolve_backend("torch", torch.empty(1)) == "torch"
    monkeypatch.setenv("ZOO_BACKEND", "torch")
    assert requested_backend("triton") == "triton"


def test_environment_is_read_at_every_call(monkeypatch):
    monkeypatch.setenv("ZOO_BACKEND", "torch")
    assert requested_backend() == "torch"
    monkeypatch.setenv("ZOO_BACKEND", "triton")
    assert requested_backend() == "triton"
    monkeypatch.setenv("ZOO_BACKEND", "")
    assert requested_backend() == "auto"
    monkeypatch.delenv("ZOO_BACKEND")
    assert requested_backend() == "auto"


def test_environment_selects_the_interpreter_on_cpu(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER", True)
    monkeypatch.setenv("ZOO_BACKEND", "TRITON")  # case-insensitive
    assert resolve_backend("auto", torch.empty(1)) == "triton"


def test_unknown_names_are_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch', 'triton'\), got 'cuda'"):
        requested_backend("cuda")
    monkeypatch.setenv("ZOO_BACKEND", "fast")
    with pytest.raises(ValueError, match="environment variable ZOO_BACKEND must be one of"):
        requested_backend()


def test_triton_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("ZOO_BACKEND", raising=False)
    monkeypatch.setattr(backend_module, "INTERPRETER", False)
    with pytest.raises(ValueError, match="needs a CUDA tensor, got a CPU tensor"):
        resolve_backend("triton", torch.empty(1))
    with pytest.raises(ValueError, match="got device 'meta'"):
        resolve_backend("triton", torch.empty(1, device="meta"))
    monkeypatch.setattr(backend_module, "HAS_TRITON", False)
    with pytest.raises(ValueError, match="Triton is not installed"):
        resolve_backend("triton", torch.empty(1))
