"""The package without Triton, as on macOS, Windows and Linux machines without it (setup.cfg installs Triton on
Linux only): every model family builds, trains and gives the same results as with Triton installed, the CPU paths
compile with torch.compile, and asking for the Triton backend is a clear error. Each case runs in a fresh
interpreter in which ``import triton`` fails as it does where Triton is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# ``sys.modules["triton"] = None`` makes ``import triton`` raise ImportError and importlib.util.find_spec("triton")
# return None (what torch checks), before anything imports it.
_HIDE_TRITON = 'import sys\nsys.modules["triton"] = None\n'

# Two eager training steps of the reduced member of every family (tests/helpers.py), on the CPU with the default
# backend: the losses and the sum of the parameters after the steps, as JSON.
_TRAIN = """
import json
import timm, torch
import zoo
import zoo.kernels._backend as backend
from tests.helpers import REDUCED_MODELS
from zoo.training.step import TrainStep

torch.set_num_threads(1)
results = {"has_triton": backend.HAS_TRITON}
for name, (kwargs, (channels, side)) in REDUCED_MODELS.items():
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).train()
    step = TrainStep(model, torch.optim.AdamW(model.parameters(), lr=1e-3), mode="eager")
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(2, channels, side, side, generator=generator)
    targets = torch.randint(0, 10, (2,), generator=generator)
    precompiled = step.precompile(inputs, targets)
    losses = [float(step(inputs, targets)) for _ in range(2)]
    total = float(sum(p.detach().double().sum() for p in model.parameters()))
    results[name] = dict(losses=losses, parameter_sum=total, precompiled=precompiled)
print(json.dumps(results))
"""


def _run(code: str) -> str:
    """stdout of ``code`` in a fresh interpreter at the repository root, without the Triton interpreter's switch
    (the tests' conftest sets it; a user's process does not)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.timeout(900)
def test_every_family_trains_without_triton_as_with_it():
    """Without Triton every family trains (the loss falls over two AdamW steps) with no kernel to precompile. Where
    Triton is installed, the default backend runs the same CPU code with it: the same losses and parameters
    (float32 on one thread; 1e-6 relative leaves room for nothing but summation order)."""
    without = json.loads(_run(_HIDE_TRITON + _TRAIN).splitlines()[-1])
    assert without.pop("has_triton") is False
    for name, result in without.items():
        assert result["precompiled"] == 0, name
        assert result["losses"][1] < result["losses"][0], (name, result["losses"])
    if importlib.util.find_spec("triton") is None:  # macOS, Windows: nothing to compare with
        return
    with_triton = json.loads(_run(_TRAIN).splitlines()[-1])
    assert with_triton.pop("has_triton") is True
    assert set(without) == set(with_triton)
    for name, result in without.items():
        expected = with_triton[name]
        assert result["losses"] == pytest.approx(expected["losses"], rel=1e-6), name
        assert result["parameter_sum"] == pytest.approx(expected["parameter_sum"], rel=1e-6), name


# Every public op: backend="triton" raises a ValueError that names the missing Triton and the way out, before any
# Triton code runs; backend="auto" (group_rational also under torch.compile with fullgraph=True) computes on the CPU.
_OPS = """
import torch
import zoo.kernels as K
from zoo.kernels.fftconv import fftconv
from zoo.kernels.gelu_grn import gelu_grn
from zoo.kernels.neighborhood import neighborhood_attention

g = torch.Generator().manual_seed(0)
def rand(*shape):
    return torch.randn(*shape, generator=g)

x, a, b = rand(2, 5, 16), rand(1, 6), rand(8, 4)
image, q = rand(2, 8, 9, 9), rand(1, 9, 9, 2, 4)
calls = {
    "group_rational": lambda backend: K.group_rational(x, a, b, backend=backend),
    "layer_norm_group_rational": lambda backend: K.layer_norm_group_rational(
        x, rand(16), rand(16), a, b, backend=backend),
    "gelu_grn": lambda backend: gelu_grn(image.permute(0, 2, 3, 1), rand(8), rand(8), backend=backend),
    "dwconv2d": lambda backend: K.dwconv2d(image, rand(8, 1, 3, 3), backend=backend),
    "inception_dwconv2d": lambda backend: K.inception_dwconv2d(
        image, rand(2, 1, 3, 3), None, rand(2, 1, 1, 5), None, rand(2, 1, 5, 1), None, backend=backend),
    "s4d_kernel": lambda backend: K.s4d_kernel(
        rand(4), rand(4, 3, 2), rand(4, 3), rand(4, 3), 10, backend=backend),
    "fftconv": lambda backend: fftconv(rand(2, 4, 10), rand(4, 10), backend=backend),
    "neighborhood_attention": lambda backend: neighborhood_attention(q, q, q, 3, backend=backend),
}
for name, call in calls.items():
    assert torch.isfinite(call("auto")).all(), name
    try:
        call("triton")
    except ValueError as error:
        assert "Triton is not installed" in str(error) and "backend='torch'" in str(error), (name, error)
    else:
        raise AssertionError(f"{name}: backend='triton' ran without Triton")
compiled = torch.compile(lambda x: K.group_rational(x, a, b), fullgraph=True)
torch.testing.assert_close(compiled(x), K.group_rational(x, a, b))
print("ok")
"""


def test_ops_without_triton_run_on_the_cpu_and_refuse_the_triton_backend():
    assert _run(_HIDE_TRITON + _OPS).splitlines()[-1] == "ok"
