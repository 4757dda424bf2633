"""TrainStep.precompile / zoo.training.step.precompile: one forward and backward whose Triton launches compile (in a
thread pool) instead of running, so that the first real step compiles nothing, and leaves the model's state as it
was. Without a GPU: a subprocess whose kernels compile for a stand-in sm_90 GPU (scripts/host_time.py's driver,
launches stubbed), kat_t at 32 px with the Triton backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zoo.training.step import TrainStep, precompile

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "scripts")  # run from the repository root
    import host_time
    host_time.install_stand_in()

    import torch
    import triton
    import zoo
    from zoo.training.step import TrainStep

    compiles = []
    compile_fn = triton.compiler.compile

    def counted(src, *args, **kwargs):
        if hasattr(src, "fn"):
            compiles.append(src.fn.__name__)
        return compile_fn(src, *args, **kwargs)

    triton.compiler.compile = counted  # JITFunction looks it up here when it compiles (or loads from disk)

    torch.manual_seed(0)
    model = zoo.create_model("kat_t", img_size=32, num_classes=10, backend="triton")
    step = TrainStep(model, torch.optim.AdamW(model.parameters()), amp_dtype=torch.bfloat16)
    inputs, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    queued = step.precompile(inputs, targets, workers=2)
    kernels = sorted(set(compiles))
    print("precompile", queued, len(compiles), kernels)
    assert queued == len(compiles) > 0, (queued, compiles)
    assert {"_group_rational_fwd_kernel", "_group_rational_bwd_kernel"} <= set(kernels), kernels
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)

    compiles.clear()
    step(inputs, targets)  # the first real step: every binary is in Triton's cache already
    assert compiles == [], compiles
    print("ok")
    """
)


def test_precompile_compiles_every_kernel_of_the_first_step_and_changes_nothing(tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    env.pop("ZOO_BACKEND", None)
    script = tmp_path / "precompile_check.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-4000:]


def test_precompile_is_a_no_op_in_compile_mode():
    model = torch.nn.Linear(3, 2)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), mode="compile")
    assert step.precompile(torch.randn(4, 3), torch.tensor([0, 1, 1, 0])) == 0
    assert model.weight.grad is None


def test_precompile_restores_the_buffers_also_when_the_pass_fails():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def forward_loss():
        model(torch.randn(4, 3) * 5 + 2)  # moves the BatchNorm statistics
        raise ValueError("in the pass")

    with pytest.raises(ValueError, match="in the pass"):
        precompile(forward_loss, model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert precompile(lambda: model(torch.randn(4, 3)), model) == 0  # nothing compiled Triton: the CPU
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
