"""Test set-up: the Triton interpreter on CPU-only machines, the `gpu` marker, the compile-report summary."""

import os

import torch

# Must happen before `kernels` (and so triton.jit) is imported anywhere: on a machine without CUDA the Triton
# kernels run through the interpreter, on CPU tensors. On a GPU machine they compile and run on the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# tests/kernels/test_compile_targets.py writes its registers/spills table here (from any xdist worker); the
# controlling process prints it in the terminal summary.
COMPILE_REPORT = Path(__file__).resolve().parents[1] / ".pytest_cache" / "zoo-compile-report.txt"
_SESSION_START = time.time()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if COMPILE_REPORT.exists() and COMPILE_REPORT.stat().st_mtime >= _SESSION_START:
        terminalreporter.section("ahead-of-time compilation: registers and spills per kernel configuration")
        terminalreporter.write_line(COMPILE_REPORT.read_text().rstrip())
