"""Host time per eager call of the zoo's Triton ops, measured on a machine without a GPU.

    python scripts/host_time.py                           # every op family below, benchmark.py's small cases
    python scripts/host_time.py --ops rational --calls 500
    python scripts/host_time.py --out benchmarks/results/cpu  # also <cpu>-<date>-host-time.json there

An eager Triton op spends host time in its own Python (validation, allocations, the launch geometry), in autograd
(the ``torch.autograd.Function`` and its backward node) and in Triton's launch path (``JITFunction.run``: binding
the arguments, their specialisation, the cache lookup, the autotuner's) before the driver's launch call. On a GPU
they add up to an op's host time per call (``host_us`` in scripts/benchmark.py's rows; issue 21 asks for at most
0.1 ms per group-rational forward+backward). Here all of it runs for real but the driver: the ops take CPU tensors
with the interpreter off, their launches go through Triton's own launch path for a stand-in sm_90 GPU (each kernel
is compiled for sm_90 on its first call, as the ahead-of-time specs are), and only the final launch call does
nothing (:class:`StandInDriver`, :func:`_no_launch`). Each row is the median of ``--calls`` single calls on the
host clock, after one untimed call (compiles, autotuning); the cases are benchmark.py's small ones (host time
hardly depends on the size).

What it cannot see, and a GPU adds: the driver's launch call (a few microseconds per kernel), CUDA's caching
allocator in place of the CPU's, and the autograd engine handing the backward to its CUDA device thread (on a CPU
the backward runs on the calling thread). ``host_probe``'s rows measure those parts on a GPU. The stand-in driver
answers what Triton 3.6 and 3.8 ask; another version may ask more (an ``AttributeError`` names it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: the compiled launch path, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
import triton.compiler.compiler as triton_compiler  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (scripts/benchmark.py: the ops' cases and their calls)
from _host import commit, cpu_name, load, write_results  # noqa: E402

import zoo.kernels._backend as backend  # noqa: E402

# The implementations of each op family whose host time this measures: the Triton paths, and host_probe's
# yardsticks (a bare launch of an empty kernel, an empty Function around such launches, ATen's x * 1.0).
IMPLS = {
    "rational": ("triton",),
    "norm_rational": ("triton", "triton-unfused"),
    "gelu_grn": ("triton", "modules"),
    "batch_norm_add": ("triton", "modules"),
    "batch_norm_se": ("triton", "modules"),
    "host_probe": ("triton-launch", "fast-launch", "triton", "torch"),
    "dwconv": ("triton",),
    "inception": ("triton",),
    "ssm": ("triton",),
    "fftconv": ("triton",),
    "neighborhood": ("triton",),
}
STAND_IN_TARGET = GPUTarget("cuda", 90, 32)  # an H100 / H200


def _benchmark_once(fn, quantiles=None, **kwargs):
    """The autotuner's benchmarker: runs a configuration once (it compiles) and calls every one equally fast."""
    fn()
    return [1.0] * len(quantiles) if quantiles else 1.0


class StandInDriver:
    """What Triton's launch path asks the active driver, answered for a stand-in sm_90 GPU: device 0, stream 0,
    the sm_90 target (kernels compile for it), and a benchmarker for the autotuner."""

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return STAND_IN_TARGET

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        return _benchmark_once


def _no_launch(self) -> None:
    """``CompiledKernel._init_handles`` without a GPU: no module to load, and a launch call that does nothing."""
    if self.module is None:
        self.module = self.function = 0
        self._run = lambda *args: None


def install_stand_in() -> None:
    """Route every Triton launch of this process through :class:`StandInDriver` and :func:`_no_launch`, and let the
    zoo's launchers take CPU tensors (their device check accepts the CPU as it does under the interpreter)."""
    triton.runtime.driver.set_active(StandInDriver())
    triton_compiler.CompiledKernel._init_handles = _no_launch
    backend.INTERPRETER = True  # read only by check_triton_device; the kernels' own flags keep the GPU's settings


def host_rows(ops: list[str], calls: int) -> list:
    """benchmark.OpRow rows of ``ops`` (their small cases on the CPU, ``IMPLS`` only), ``ms`` the host time."""
    benchmark.TIMING = benchmark.Timing(cpu_warmup=True, cpu_samples=calls)
    device = torch.device("cpu")
    rows = []
    for op in ops:
        rows += benchmark.OPS[op](True, torch.bfloat16, device, False, impls=IMPLS[op])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="*", choices=sorted(IMPLS), default=list(IMPLS), help="op families")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per row (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write <cpu>-<date>-host-time.json here")
    args = parser.parse_args(argv)
    install_stand_in()
    results = dict(
        device=cpu_name(),
        date=_dt.date.today().isoformat(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        commit=commit(),
        load_average_before=load(),
        settings=dict(calls=args.calls, launch="stubbed (stand-in sm_90 driver)"),
    )
    rows = host_rows(args.ops, args.calls)
    results["rows"] = [
        dict(op=r.op, case=r.case, dtype=r.dtype, pass_=r.pass_, impl=r.impl, host_us=round(r.ms * 1e3, 1))
        for r in rows
    ]
    results["load_average_after"] = load()
    print(
        f"Host time per eager call, {results['device']}, Triton {triton.__version__}, launch calls stubbed "
        "(scripts/host_time.py)\n"
    )
    print("| op | case | dtype | pass | impl | host us |\n|---|---|---|---|---|---:|")
    for r in results["rows"]:
        print(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['pass_']} | {r['impl']} | {r['host_us']:.1f} |")
    if args.out:
        print(f"\nwrote {write_results(args.out, results, 'host-time')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
