"""Where does the time of the group-rational op go on a GPU? Kernel timings per column tile, the host-side
(CPU) cost of each layer of the call, and forward+backward timed eagerly and as CUDA-graph replays (device
time without launch gaps). A measuring aid for tuning, not the benchmark of record (scripts/benchmark.py).

    PYTHONPATH=. python scripts/profile_rational.py          # kernels per tile width, host time, graph time
    PYTHONPATH=. python scripts/profile_rational.py --host   # cProfile of the eager forward+backward
"""

from __future__ import annotations

import time

import torch
import triton

from zoo.kernels.rational import group_rational, group_rational_backward, group_rational_forward


def _cpu_us(fn, n: int = 200) -> float:
    """Host time per call, without waiting for the GPU (what a launch-bound loop pays)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / n * 1e6


def host_profile() -> None:
    """cProfile of many eager forward+backward calls: where the host time goes (eager Function vs the
    registered op's autograd), each against autograd of a plain multiplication."""
    import cProfile
    import pstats

    x = torch.randn(128, 197, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    a = torch.randn(1, 6, device="cuda", requires_grad=True)
    b = torch.randn(8, 4, device="cuda", requires_grad=True)
    dy = torch.randn_like(x)
    steps = {
        "baseline x*2": lambda: torch.autograd.grad(x * 2, x, dy),
        "eager Function": lambda: torch.autograd.grad(group_rational(x, a, b, backend="triton"), (x, a, b), dy),
        "registered op": lambda: torch.autograd.grad(torch.ops.zoo.group_rational(x, a, b), (x, a, b), dy),
    }
    for _ in range(2):
        print("host us/call: " + ", ".join(f"{name} {_cpu_us(fn):.1f}" for name, fn in steps.items()))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(200):
        steps["eager Function"]()
    profiler.disable()
    torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def profile_width(width: int, device: str = "cuda") -> None:
    """Kernel timings per column tile, host time per layer of the call, eager vs CUDA-graph fwd+bwd, at one width."""
    x = torch.randn(128, 197, width, device=device, dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    a = torch.randn(1, 6, device=device)
    b = torch.randn(8, 4, device=device)
    nbytes = x.numel() * x.element_size()
    print(f"--- width {width}: x is {nbytes / 1e6:.1f} MB")
    for block_d in (None, 64, 128, 256):
        fwd = triton.testing.do_bench(
            lambda block_d=block_d: group_rational_forward(x, a, b, block_d=block_d), return_mode="median"
        )
        print(f"fwd block_d={block_d}: {fwd * 1e3:7.1f} us ({2 * nbytes / fwd / 1e6:6.0f} GB/s)")
    for block_d in (None, 32, 64, 128, None):
        bwd = triton.testing.do_bench(
            lambda block_d=block_d: group_rational_backward(dy, x, a, b, block_d=block_d), return_mode="median"
        )
        print(f"bwd block_d={block_d}: {bwd * 1e3:7.1f} us ({3 * nbytes / bwd / 1e6:6.0f} GB/s)")
    xr = x.clone().requires_grad_(True)
    ar, br = a.clone().requires_grad_(True), b.clone().requires_grad_(True)

    def step():
        return torch.autograd.grad(group_rational(xr, ar, br, backend="triton"), (xr, ar, br), dy)

    print(
        f"host us/call: forward launcher {_cpu_us(lambda: group_rational_forward(x, a, b)):.1f}, "
        f"op {_cpu_us(lambda: torch.ops.zoo.group_rational(x, a, b)):.1f}, "
        f"backward launcher {_cpu_us(lambda: group_rational_backward(dy, x, a, b)):.1f}, "
        f"autograd fwd+bwd {_cpu_us(step):.1f}, "
        f"x.mul(2) for scale {_cpu_us(lambda: x.mul(2)):.1f}, "
        f"autograd of x*2 {_cpu_us(lambda: torch.autograd.grad(xr * 2, xr, dy)):.1f}"
    )
    eager = triton.testing.do_bench(step, return_mode="median")
    graph = triton.testing.do_bench_cudagraph(step, return_mode="median")
    print(f"fwd+bwd eager {eager * 1e3:.1f} us, CUDA graph {graph * 1e3:.1f} us ({5 * nbytes / graph / 1e6:.0f} GB/s)")


def main() -> None:
    """The profile at ViT-B's two activation widths (768 and 3072 channels)."""
    for width in (768, 3072):
        profile_width(width)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", action="store_true", help="profile the host side of eager calls (cProfile)")
    host_profile() if parser.parse_args().host else main()
