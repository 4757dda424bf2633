"""Test set-up: the Triton interpreter on CPU-only machines, the `gpu` marker, the compile-report summary, the
one-thread fixture."""

import os

import torch

# Must happen before `zoo.kernels` (and so triton.jit) is imported anywhere: on a machine without CUDA the Triton
# kernels run through the interpreter, on CPU tensors. On a GPU machine they compile and run on the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# tests/kernels/test_compile_targets.py writes its registers/spills table to a temporary file whose name the
# controlling process puts in the environment before xdist starts its workers; the controller prints it in the
# terminal summary.
_REPORT_ENV = "ZOO_TEST_COMPILE_REPORT"
if _REPORT_ENV not in os.environ:
    os.environ[_REPORT_ENV] = os.path.join(tempfile.mkdtemp(prefix="zoo-tests-"), "compile-report.txt")


def compile_report_path() -> Path:
    return Path(os.environ[_REPORT_ENV])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    report = compile_report_path()
    if report.exists():
        terminalreporter.section("ahead-of-time compilation: registers and spills per kernel configuration")
        terminalreporter.write_line(report.read_text().rstrip())


@pytest.fixture(autouse=True)
def _torch_algorithms_as_they_were():
    """An in-process training run with ``deterministic=true`` turns on torch's deterministic algorithms for the
    whole process (zoo/training/trainer.py ``seed_everything``); every test gets the mode it started with."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = cudnn_benchmark


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One intra-op thread while a module's tests run (``pytestmark = pytest.mark.usefixtures(...)``), or a test
    (as an argument): on two shared cores (CI, ``pytest -n 2``) two threads per process spin against each other and
    any other load, and make small convolutions and matrix products many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["compiled", "eager"])
def cpu_compile_mode(request, monkeypatch):
    """Run the CPU paths' math compiled by ``torch.compile`` (the default; the test inputs are small, so the size
    threshold is lifted) or eagerly (``ZOO_CPU_COMPILE=0``); zoo/kernels/_cpu_compile.py. The value is the mode."""
    import zoo.kernels._cpu_compile as compile_module

    monkeypatch.setenv(compile_module.COMPILE_ENV_VAR, "1" if request.param == "compiled" else "0")
    monkeypatch.setattr(compile_module, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(compile_module, "_COMPILE_FAILED", [])
    monkeypatch.setattr(compile_module, "_COMPILE_WORKED", [])
    return request.param
